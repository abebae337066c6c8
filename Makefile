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
BUILD := build$(if $(SAN),-san)

CXX ?= g++
CXXFLAGS := -std=c++20 -Wall -Wextra -Werror -O2 -g -MMD -MP -Icommon
LDFLAGS :=
ifneq ($(SAN),)
  # Any sanitizer report aborts the process, so the test that caused it fails.
  # vptr checks are off: doctest's own ContextScope trips a false positive with g++ 12.
  CXXFLAGS += -O1 -fsanitize=address,undefined -fno-sanitize=vptr -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=address,undefined
endif

# The Python that has pytest: python3 on PATH may be a separate interpreter (pyenv, venv) that
# does not see Debian's python3-pytest; /usr/bin/python3 does once the package is installed.
PYTHON ?= $(or $(firstword $(foreach p,python3 /usr/bin/python3,$(shell $(p) -c 'import pytest, pytest_timeout, xdist' 2>/dev/null && command -v $(p)))),/usr/bin/python3)
PYTEST = $(PYTHON) -m pytest -p no:cacheprovider --timeout=180 --build-dir=$(BUILD) $(if $(SAN),--sanitized)

LESSON_DIRS := $(sort $(wildcard lessons/[0-9][0-9]-*))
LESSONS := $(foreach d,$(LESSON_DIRS),$(firstword $(subst -, ,$(notdir $(d)))))
IMPLS := lessons solutions

# Every lesson builds one program: `server`, except where a lesson says otherwise here.
BIN_NAME = $(or $(BIN_NAME_$(1)),server)
BIN_NAME_08 := facts
LDLIBS_07 := -levent

COMMON_SRCS := $(wildcard common/*.cpp)
COMMON_OBJS := $(patsubst common/%.cpp,$(BUILD)/common/%.o,$(COMMON_SRCS))

$(BUILD)/common/%.o: common/%.cpp
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -c -o $@ $<

# lesson_rules(impl, NN): how build/<impl>/NN/<bin> is made from <impl>/NN-*/*.cpp.
define lesson_rules
$(1)_$(2)_DIR := $(wildcard $(1)/$(2)-*)
$(1)_$(2)_OBJS := $$(patsubst $$($(1)_$(2)_DIR)/%.cpp,$(BUILD)/$(1)/$(2)/obj/%.o,$$(wildcard $$($(1)_$(2)_DIR)/*.cpp))
$(BUILD)/$(1)/$(2)/$(call BIN_NAME,$(2)): $$($(1)_$(2)_OBJS) $(COMMON_OBJS)
	$$(CXX) $$(LDFLAGS) -o $$@ $$^ $(LDLIBS_$(2))
$(BUILD)/$(1)/$(2)/obj/%.o: $$($(1)_$(2)_DIR)/%.cpp
	@mkdir -p $$(@D)
	$$(CXX) $$(CXXFLAGS) -I$$($(1)_$(2)_DIR) -c -o $$@ $$<
BINARIES_$(1) += $(BUILD)/$(1)/$(2)/$(call BIN_NAME,$(2))
endef
$(foreach impl,$(IMPLS),$(foreach n,$(LESSONS),$(eval $(call lesson_rules,$(impl),$(n)))))

# Unit tests: tests/unit/*.cpp with one doctest main, built against the chosen implementation
# (lesson-specific headers are included as "NN-slug/file.h").
UNIT_SRCS := $(wildcard tests/unit/*.cpp)
$(foreach impl,$(IMPLS),$(eval UNIT_OBJS_$(impl) := $(patsubst tests/unit/%.cpp,$(BUILD)/$(impl)/unit/%.o,$(UNIT_SRCS))))
$(BUILD)/%/unit/unit_tests: $$(UNIT_OBJS_$$*) $(COMMON_OBJS)
	$(CXX) $(LDFLAGS) -o $@ $^
$(BUILD)/lessons/unit/%.o: tests/unit/%.cpp
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -Ilessons -c -o $@ $<
$(BUILD)/solutions/unit/%.o: tests/unit/%.cpp
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -Isolutions -c -o $@ $<

.PHONY: help all deps test unit starters-fail progress clean bench soak $(LESSONS)
.PHONY: $(addprefix check-,$(LESSONS)) $(addprefix run-,$(LESSONS))

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

$(LESSONS): %: $$(BUILD)/$$(IMPL)/%/$$(call BIN_NAME,%)

all: $(BINARIES_lessons) $(BINARIES_solutions) $(BUILD)/solutions/unit/unit_tests $(BUILD)/lessons/unit/unit_tests

deps:
	@tools/need-packages 'command -v g++=g++' \
	  'test -f /usr/include/doctest/doctest.h=doctest-dev' \
	  '$(PYTHON) -c "import pytest"=python3-pytest' \
	  '$(PYTHON) -c "import pytest_timeout"=python3-pytest-timeout' \
	  '$(PYTHON) -c "import xdist"=python3-pytest-xdist' \
	  'test -f /usr/include/event2/event.h=libevent-dev' \
	  'command -v strace=strace'

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

# The suite CI runs. Solutions must pass everything; every starter must compile and fail.
test: deps
	$(MAKE) --no-print-directory -j$(shell nproc) all
	$(MAKE) --no-print-directory unit
	$(PYTEST) -q -n 2 tests --impl solutions  # two workers: most tests wait on sockets, not CPU
	$(MAKE) --no-print-directory starters-fail

# An exercise whose starter already passes teaches nothing: each starter must fail its tests.
starters-fail: deps
	@for n in $(LESSONS); do \
	  if $(PYTEST) -q -x tests --impl lessons --lesson $$n > $(BUILD)/starter-$$n.log 2>&1; then \
	    echo "starter $$n PASSES its tests: the exercise teaches nothing (see $(BUILD)/starter-$$n.log)"; exit 1; \
	  else \
	    echo "starter $$n fails its tests, as a starter should: $$(grep -m1 -E '^(FAILED|ERROR) ' $(BUILD)/starter-$$n.log | cut -c1-110)"; \
	  fi; \
	done

# Static pattern rules: make never applies a plain pattern rule (check-%) to a .PHONY target.
# A lesson's own unit tests live in tests/unit/test_NN_*.cpp; doctest's --source-file picks them.
$(addprefix check-,$(LESSONS)): check-%: deps
	@$(MAKE) --no-print-directory -s $* IMPL=$(IMPL) $(if $(wildcard tests/unit/test_$*_*.cpp),$(BUILD)/$(IMPL)/unit/unit_tests)
	$(if $(wildcard tests/unit/test_$*_*.cpp),$(BUILD)/$(IMPL)/unit/unit_tests --source-file='*test_$*_*')
	$(PYTEST) -q $(PYTEST_ARGS) tests --impl $(IMPL) --lesson $*

progress: deps
	@next=""; for n in $(LESSONS); do \
	  if $(MAKE) --no-print-directory -s check-$$n IMPL=$(IMPL) PYTEST_ARGS=-x >/dev/null 2>&1; then s=PASS; \
	  else s=todo; [ -n "$$next" ] || next=$$n; fi; \
	  printf '  %s  %-4s %s\n' "$$n" "$$s" "$$(basename $$(ls -d lessons/$$n-*))"; \
	done; \
	if [ -n "$$next" ]; then echo "next: lessons/$$(basename $$(ls -d lessons/$$next-*))/README.md, then make check-$$next"; \
	else echo "all lessons pass"; fi

$(addprefix run-,$(LESSONS)): run-%:
	@$(MAKE) --no-print-directory $* IMPL=$(IMPL)
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
	@tools/need-packages 'command -v bear=bear'
	bear -- $(MAKE) --no-print-directory -B all

clean:
	rm -rf build build-san

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
