# One entry point for building, running and testing the lessons. `make help` lists the targets.
#
#   make 03                      build the learner's lesson 03 into build/lessons/03/server
#   make 03 IMPL=solutions       build the reference answer into build/solutions/03/server
#   make check-03                test the learner's lesson 03
#   make test                    the repository's own suite (what CI runs)

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.SECONDEXPANSION:
.SECONDARY:  # keep object files that pattern rules build on the way

IMPL ?= lessons
SAN ?=
TSAN ?=
BUILD := build$(if $(SAN),-san)$(if $(TSAN),-tsan)

CXX ?= g++
CXXFLAGS := -std=c++20 -Wall -Wextra -Werror -O2 -g -MMD -MP -Icommon -pthread
LDFLAGS := -pthread
ifneq ($(SAN),)
  # Any sanitizer report aborts the process, so the test that caused it fails.
  # vptr checks are off: doctest's own ContextScope trips a false positive with g++ 12.
  CXXFLAGS += -O1 -fsanitize=address,undefined -fno-sanitize=vptr -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=address,undefined
endif
ifneq ($(TSAN),)
  # ThreadSanitizer for the lessons with threads (09, 10): a data race report fails the test
  # (halt_on_error, set by the test harness through TSAN_OPTIONS).
  CXXFLAGS += -O1 -fsanitize=thread -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=thread
endif

# The Python that sees every module tools/debian-packages.txt provides: python3 on PATH may be a
# separate interpreter (pyenv, venv) that does not see Debian's packages; /usr/bin/python3 does.
PYTHON ?= $(shell tools/need-packages --python)
# A test that hangs fails after TEST_TIMEOUT seconds, with the stack it hung in. The slowest test
# takes about 6 s here; the sanitizers slow the servers several times.
TEST_TIMEOUT ?= $(if $(SAN)$(TSAN),180,60)
PYTEST = $(PYTHON) -m pytest -p no:cacheprovider --timeout=$(TEST_TIMEOUT) --build-dir=$(BUILD) $(if $(SAN)$(TSAN),--sanitized)

LESSON_DIRS := $(sort $(wildcard lessons/[0-9][0-9]-*))
LESSONS := $(foreach d,$(LESSON_DIRS),$(firstword $(subst -, ,$(notdir $(d)))))
# IMPL may also be a copy of solutions/ elsewhere (the mistake catalogue builds such copies).
IMPLS := lessons solutions $(filter-out lessons solutions,$(IMPL))

# Every lesson builds one program: `server`, except where a lesson says otherwise here.
BIN_NAME = $(or $(BIN_NAME_$(1)),server)
BIN_NAME_08 := facts
CXXFLAGS_08 = $(TEST_CXXFLAGS)  # lesson 08 is a doctest program: compiled like the tests
LDLIBS_07 := -levent
LDLIBS_11 := -luring

COMMON_SRCS := $(wildcard common/*.cpp)
COMMON_OBJS := $(patsubst common/%.cpp,$(BUILD)/common/%.o,$(COMMON_SRCS))

$(BUILD)/common/%.o: common/%.cpp
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -c -o $@ $<

# A lesson may build on an earlier lesson's code of the same implementation: USES_09 := 06 adds
# -I<impl>/06-*/ and links <impl>/06-*/*.cpp except server.cpp, so lesson 09 runs on the learner's
# own lesson 06 (IMPL=lessons) or on the reference (IMPL=solutions).
USES_09 := 06

# lesson_rules(impl, NN): how build/<impl>/NN/<bin> is made from <impl>/NN-*/*.cpp.
define lesson_rules
$(1)_$(2)_DIR := $(wildcard $(1)/$(2)-*)
$(1)_$(2)_OBJS := $$(patsubst $$($(1)_$(2)_DIR)/%.cpp,$(BUILD)/$(1)/$(2)/obj/%.o,$$(wildcard $$($(1)_$(2)_DIR)/*.cpp))
$(1)_$(2)_USED_OBJS := $$(foreach u,$(USES_$(2)),$$(filter-out %/obj/server.o,$$($(1)_$$(u)_OBJS)))
$(1)_$(2)_USED_INCLUDES := $$(foreach u,$(USES_$(2)),-I$$($(1)_$$(u)_DIR))
$(BUILD)/$(1)/$(2)/$(call BIN_NAME,$(2)): $$($(1)_$(2)_OBJS) $$($(1)_$(2)_USED_OBJS) $(COMMON_OBJS)
	@mkdir -p $$(@D)
	$$(CXX) $$(LDFLAGS) -o $$@ $$^ $(LDLIBS_$(2))
$(BUILD)/$(1)/$(2)/obj/%.o: $$($(1)_$(2)_DIR)/%.cpp
	@mkdir -p $$(@D)
	$$(CXX) $$(or $$(CXXFLAGS_$(2)),$$(CXXFLAGS)) -I$$($(1)_$(2)_DIR) $$($(1)_$(2)_USED_INCLUDES) -c -o $$@ $$<
BINARIES_$(1) += $(BUILD)/$(1)/$(2)/$(call BIN_NAME,$(2))
endef
$(foreach impl,$(IMPLS),$(foreach n,$(LESSONS),$(eval $(call lesson_rules,$(impl),$(n)))))

# Unit tests: tests/unit/*.cpp with one doctest main. The tests of common/ are the same for every
# implementation and are built once; a lesson's own (test_NN_*.cpp) includes "NN-slug/file.h" of
# the chosen implementation. Test code is compiled without optimisation: it runs for a second and
# compiles in half the time (doctest's assertions are heavy templates).
TEST_CXXFLAGS = $(filter-out -O2,$(CXXFLAGS)) $(if $(SAN)$(TSAN),,-O0)
UNIT_LESSON_SRCS := $(wildcard tests/unit/test_[0-9][0-9]_*.cpp)
UNIT_SHARED_OBJS := $(patsubst tests/unit/%.cpp,$(BUILD)/unit/%.o,$(filter-out $(UNIT_LESSON_SRCS),$(wildcard tests/unit/*.cpp)))
$(BUILD)/unit/%.o: tests/unit/%.cpp
	@mkdir -p $(@D)
	$(CXX) $(TEST_CXXFLAGS) -c -o $@ $<
define unit_rules
$(BUILD)/$(1)/unit/unit_tests: $(patsubst tests/unit/%.cpp,$(BUILD)/$(1)/unit/%.o,$(UNIT_LESSON_SRCS)) $(UNIT_SHARED_OBJS) $(COMMON_OBJS)
	$$(CXX) $$(LDFLAGS) -o $$@ $$^
$(BUILD)/$(1)/unit/%.o: tests/unit/%.cpp
	@mkdir -p $$(@D)
	$$(CXX) $$(TEST_CXXFLAGS) -I$(1) -c -o $$@ $$<
endef
$(foreach impl,$(IMPLS),$(eval $(call unit_rules,$(impl))))

.PHONY: help all deps test unit starters-fail progress clean bench soak fresh-machine mistakes $(LESSONS)
.PHONY: $(addprefix check-,$(LESSONS)) $(addprefix run-,$(LESSONS)) $(addprefix starter-fails-,$(LESSONS))

help:
	@echo "Lessons: $(LESSONS)"
	@echo "  make NN [IMPL=solutions]   build lesson NN (yours by default) into $(BUILD)/<impl>/NN/"
	@echo "  make check-NN              test your lesson NN (make check-NN IMPL=solutions: the reference)"
	@echo "  make run-NN                run your lesson NN's server in the foreground"
	@echo "  make progress              which of your lessons pass, and which is next"
	@echo "  make test                  the repository's suite: build all, unit tests, solutions, starters"
	@echo "  make test SAN=1            the same under AddressSanitizer and UBSan"
	@echo "  make soak, make bench      the long runs (minutes), not part of make test; make bench-quick (1 min)"
	@echo "  make loadgen               lesson 07's load generator: build/clients/loadgen --help"
	@echo "  make compile_commands.json for clangd and other editors"
	@echo "  make mistakes              the catalogue of typical mistakes, each proven caught (minutes)"
	@echo "  make fresh-machine         git clone to a green make test in a clean Debian 12 chroot (root)"

$(LESSONS): %: $$(BUILD)/$$(IMPL)/%/$$(call BIN_NAME,%)

all: $(BINARIES_lessons) $(BINARIES_solutions) $(BUILD)/solutions/unit/unit_tests $(BUILD)/lessons/unit/unit_tests

# What every build and test needs from Debian: the deps rows of tools/debian-packages.txt.
deps:
	@PYTHON=$(PYTHON) tools/need-packages deps

unit: deps $(BUILD)/solutions/unit/unit_tests
	$(BUILD)/solutions/unit/unit_tests

# Lesson 02's demonstration of FD_SET past FD_SETSIZE (tests/fd_set_overflow.cpp), built twice with
# its own flags (never SAN: a sanitizer would report the very overflow it shows): as Debian's g++
# builds by default, unfortified (silent corruption), and with _FORTIFY_SOURCE=2 (glibc aborts).
FD_SET_DEMOS := $(BUILD)/demo/fd_set_overflow $(BUILD)/demo/fd_set_overflow_fortified
$(BUILD)/demo/fd_set_overflow: tests/fd_set_overflow.cpp
	@mkdir -p $(@D)
	$(CXX) -std=c++20 -Wall -Wextra -Werror -O2 -U_FORTIFY_SOURCE -o $@ $<
$(BUILD)/demo/fd_set_overflow_fortified: tests/fd_set_overflow.cpp
	@mkdir -p $(@D)
	$(CXX) -std=c++20 -Wall -Wextra -Werror -O2 -U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=2 -o $@ $<
02 all: $(FD_SET_DEMOS)

# Lesson 11: runs a program with io_uring blocked by a seccomp filter, as Docker's default profile
# blocks it (tests/without_io_uring.cpp); the test of the server's "io_uring is not available" path.
WITHOUT_IO_URING := $(BUILD)/demo/without_io_uring
$(WITHOUT_IO_URING): tests/without_io_uring.cpp
	@mkdir -p $(@D)
	$(CXX) -std=c++20 -Wall -Wextra -Werror -O2 -o $@ $<
# And what close() does to a socket with an io_uring recv armed (tests/close_with_recv_armed.cpp).
CLOSE_WITH_RECV_ARMED := $(BUILD)/demo/close_with_recv_armed
$(CLOSE_WITH_RECV_ARMED): tests/close_with_recv_armed.cpp
	@mkdir -p $(@D)
	$(CXX) -std=c++20 -Wall -Wextra -Werror -O2 -o $@ $< -luring
11 all: $(WITHOUT_IO_URING) $(CLOSE_WITH_RECV_ARMED)

# The suite CI runs. Solutions must pass everything; every starter must compile and fail.
test: deps
	$(MAKE) --no-print-directory -j$(shell nproc) all
	$(MAKE) --no-print-directory unit
	$(PYTEST) -q -n 2 tests --impl solutions  # two workers: most tests wait on sockets, not CPU
	$(MAKE) --no-print-directory starters-fail

# An exercise whose starter already passes teaches nothing: each starter must fail its tests.
starters-fail: deps
	@$(MAKE) --no-print-directory -j$(shell nproc) $(addprefix starter-fails-,$(LESSONS))
$(addprefix starter-fails-,$(LESSONS)): starter-fails-%:
	@if $(PYTEST) -q -rfEs -x tests --impl lessons --lesson $* > $(BUILD)/starter-$*.log 2>&1; then \
	  if grep -q "lesson $* cannot run here" $(BUILD)/starter-$*.log; then \
	    echo "starter $* not checked: $$(grep -m1 -o 'cannot run here: .*' $(BUILD)/starter-$*.log)"; exit 0; \
	  fi; \
	  echo "starter $* PASSES its tests: the exercise teaches nothing (see $(BUILD)/starter-$*.log)"; exit 1; \
	else \
	  echo "starter $* fails its tests, as a starter should: $$(grep -m1 -E '^(FAILED|ERROR) ' $(BUILD)/starter-$*.log | cut -c1-110)"; \
	fi

# Static pattern rules: make never applies a plain pattern rule (check-%) to a .PHONY target.
# A lesson's own unit tests live in tests/unit/test_NN_*.cpp; doctest's --source-file picks them.
$(addprefix check-,$(LESSONS)): check-%: deps
	@$(MAKE) --no-print-directory -s $* IMPL=$(IMPL) $(if $(wildcard tests/unit/test_$*_*.cpp),$(BUILD)/$(IMPL)/unit/unit_tests)
	$(if $(wildcard tests/unit/test_$*_*.cpp),$(BUILD)/$(IMPL)/unit/unit_tests --source-file='*test_$*_*' $(if $(ALL),,--abort-after=1))
	$(if $(ALL),$(PYTEST) -q -n 2 $(PYTEST_ARGS) tests --impl $(IMPL) --lesson $*,\
	  $(PYTEST) -q -x --phase first $(PYTEST_ARGS) tests --impl $(IMPL) --lesson $* && \
	  $(PYTEST) -q -x -n 2 --phase rest $(PYTEST_ARGS) tests --impl $(IMPL) --lesson $*)

# Which lessons pass their first checks (the contract's basics and their own tests), and which is
# next: one pytest run over every lesson, each stopped at its first failure.
progress: deps
	@$(MAKE) --no-print-directory -s -j$(shell nproc) $(LESSONS) IMPL=$(IMPL) 2>/dev/null || true
	@$(PYTHON) tools/progress --python $(PYTHON) --build-dir $(BUILD) --impl $(IMPL) $(LESSONS)

$(addprefix run-,$(LESSONS)): run-%: $$(BUILD)/$$(IMPL)/%/$$(call BIN_NAME,%)
	@[ "$(call BIN_NAME,$*)" != server ] || echo "Talk to it from another terminal: $(PYTHON) clients/echo_client.py --port 70$*  (Ctrl-C stops the server)"
	$(BUILD)/$(IMPL)/$*/$(call BIN_NAME,$*) $(ARGS)

# Lesson 07's load generator: an epoll client like the servers it measures (clients/loadgen.cpp).
LOADGEN := $(BUILD)/clients/loadgen
$(LOADGEN): clients/loadgen.cpp $(COMMON_OBJS)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(LDFLAGS) -o $@ $< $(COMMON_OBJS)
.PHONY: loadgen bench-quick
loadgen: $(LOADGEN)
all: $(LOADGEN)
07: $(LOADGEN)  # lesson 07's tests drive its server with loadgen
11: $(LOADGEN)  # lesson 11's test of syscalls per message too

# Lesson 07: measure every model. bench takes a few minutes, bench-quick about one. Both measure
# the reference solutions unless IMPL is given (make bench IMPL=lessons measures yours).
MEASURED_IMPL := $(if $(filter file,$(origin IMPL)),solutions,$(IMPL))
bench bench-quick:
	$(PYTHON) clients/bench.py --impl $(MEASURED_IMPL) --build-dir $(BUILD) $(if $(filter bench-quick,$@),--quick)

# The long soak under random faults: every multiplexed server for SOAK_SECONDS each (like bench,
# the solutions unless IMPL is given: make soak IMPL=lessons soaks yours).
SOAK_SECONDS ?= 10
SOAK_LESSONS := $(filter-out 01 08,$(LESSONS))
soak: deps
	@$(MAKE) --no-print-directory -s $(SOAK_LESSONS) IMPL=$(MEASURED_IMPL)
	$(PYTHON) clients/soak.py $(foreach n,$(SOAK_LESSONS),$(BUILD)/$(MEASURED_IMPL)/$(n)/server) --seconds $(SOAK_SECONDS)

# For editors (clangd): records every compile command of a full rebuild.
compile_commands.json: deps
	@tools/need-packages compile_commands
	bear -- $(MAKE) --no-print-directory -B all

# The catalogue of typical mistakes (tests/mistakes/NN/*.patch), each planted into a copy of the
# solution: make check-NN must fail on it, first at the test named for it. MISTAKES=05 for one lesson.
mistakes: deps
	$(PYTHON) tools/mistakes $(MISTAKES)

# Proves the README's path on a clean Debian 12 chroot: git clone, then make test (root, minutes).
fresh-machine:
	tools/fresh-machine $(FRESH_DIR)

# --one-file-system: never through /dev or /proc, should a killed make fresh-machine leave them
# bound into build/fresh-machine/root.
clean:
	rm -rf --one-file-system build build-san build-tsan

# The compilers' dependency files; not the Debian tree of make fresh-machine (its rc2.d, ...).
-include $(shell find $(BUILD) -path $(BUILD)/fresh-machine -prune -o -name '*.d' -type f -print 2>/dev/null)
