"""The Chinese texts (README.zh-CN.md beside each README.md) stay in step with the English: each
records the fingerprint of the English text it translates, and this test fails, naming the file,
as soon as the English has changed since. Then update the translation and its fingerprint:

    tools/translations            which translations are missing or out of date, and the fingerprints
"""

import importlib.machinery
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_tool(path):
    """tools/translations is a script without .py: its functions, loaded from it as they are."""
    loader = importlib.machinery.SourceFileLoader(path.name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(path.name, loader))
    loader.exec_module(module)
    return module


translations = load_tool(ROOT / "tools" / "translations")
english_texts, fingerprint, recorded_fingerprint = (
    translations.english_texts, translations.fingerprint, translations.recorded_fingerprint)


def test_every_text_has_a_chinese_translation_of_its_current_english():
    problems = []
    for english in english_texts():
        chinese = english.with_name("README.zh-CN.md")
        where = chinese.relative_to(ROOT)
        if not chinese.exists():
            problems.append(f"{where} is missing: {english.relative_to(ROOT)} has no Chinese translation")
            continue
        recorded, current = recorded_fingerprint(chinese), fingerprint(english)
        if recorded != current:
            problems.append(f"{where} translates {english.relative_to(ROOT)} as it was at {recorded}; the "
                            f"English is now {current}: bring the translation up to date, then record the "
                            f"new fingerprint (tools/translations)")
    assert not problems, "\n".join(problems)


def test_each_text_links_to_its_other_language_at_the_top():
    missing = []
    for english in english_texts():
        chinese = english.with_name("README.zh-CN.md")
        if "README.zh-CN.md" not in english.read_text().splitlines()[0]:
            missing.append(f"{english.relative_to(ROOT)} (first line should link to README.zh-CN.md)")
        if chinese.exists() and "README.md" not in chinese.read_text().splitlines()[0]:
            missing.append(f"{chinese.relative_to(ROOT)} (first line should link to README.md)")
    assert not missing, "texts without the link to the other language: " + ", ".join(missing)
