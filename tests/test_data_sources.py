"""Document sources: stdlib corpus, local files, Hugging Face datasets, and their errors."""

import json

import pytest

from adasplash_train.data.sources import FilesSource, HFSource, StdlibSource, build_source


def test_stdlib_is_deterministic_and_excludes_tests_idlelib_site_packages():
    source = StdlibSource()
    files = source.source_files()
    relative = [path.relative_to(source.root).as_posix() for path in files]
    assert relative == sorted(relative) and len(relative) > 300
    assert all(name.endswith(".py") for name in relative)
    forbidden = ("test/", "tests/", "idlelib/", "site-packages/", "pydoc_data/")
    assert not any(f"/{part}" in f"/{name}" for name in relative for part in forbidden)
    assert "collections/__init__.py" in relative and "json/decoder.py" in relative
    assert StdlibSource().source_files() == files


def test_stdlib_includes_topics_prose_and_honours_max_docs():
    from pydoc_data.topics import topics

    source = StdlibSource()
    assert source.num_documents() == len(source.source_files()) + len(topics)
    first = list(StdlibSource(max_docs=3).documents())
    assert len(first) == 3 and first[0] == source.source_files()[0].read_text(encoding="utf-8")
    topic_docs = list(StdlibSource(include_topics=True).documents())[-len(topics):]
    assert topic_docs == [topics[name] for name in sorted(topics)]


def test_stdlib_cache_key_changes_with_arguments():
    assert StdlibSource().cache_key() == StdlibSource().cache_key()
    assert StdlibSource(max_docs=5).cache_key() != StdlibSource().cache_key()
    assert StdlibSource(include_tests=True).cache_key() != StdlibSource().cache_key()
    assert len(StdlibSource(include_tests=True).source_files()) > len(StdlibSource().source_files())


def test_files_source_reads_txt_jsonl_parquet_in_order(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("first document", encoding="utf-8")
    with open(tmp_path / "b.jsonl", "w", encoding="utf-8") as handle:
        for text in ("second", "third"):
            handle.write(json.dumps({"text": text, "id": 1}) + "\n")
    pq.write_table(pyarrow.table({"text": ["fourth", "fifth"]}), tmp_path / "c.parquet")
    source = FilesSource(paths=str(tmp_path))
    assert list(source.documents()) == ["first document", "second", "third", "fourth", "fifth"]
    assert list(FilesSource(paths=[str(tmp_path / "*.jsonl"), str(tmp_path / "a.txt")]).documents()) == [
        "second", "third", "first document"]
    assert list(FilesSource(paths=str(tmp_path), max_docs=2).documents()) == ["first document", "second"]


def test_files_source_missing_path_names_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.source_args\.paths.*nothing found"):
        FilesSource(paths=str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match=r"data\.source_args\.paths"):
        FilesSource(paths=str(tmp_path / "*.jsonl"))
    with pytest.raises(ValueError, match=r"data\.source_args\.paths"):
        FilesSource(paths=None)


def test_files_source_rejects_unknown_suffix_and_missing_field(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        FilesSource(paths=str(tmp_path / "x.csv"))
    (tmp_path / "y.jsonl").write_text(json.dumps({"body": "hi"}) + "\n")
    with pytest.raises(ValueError, match=r"y\.jsonl:1 has no field 'text'.*text_field"):
        list(FilesSource(paths=str(tmp_path / "y.jsonl")).documents())
    assert list(FilesSource(paths=str(tmp_path / "y.jsonl"), text_field="body").documents()) == ["hi"]


def test_files_cache_key_changes_when_a_file_changes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one")
    before = FilesSource(paths=str(path)).cache_key()
    path.write_text("one and more")
    assert FilesSource(paths=str(path)).cache_key() != before


@pytest.fixture
def hf_offline(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # datasets reads these at import time; the flag also has to change if it is already imported.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return datasets


def test_hf_source_loads_a_local_builder(hf_offline, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"content": t}) for t in ("alpha", "beta", "gamma")) + "\n")
    source = HFSource(name="json", text_field="content", max_docs=2,
                      load_kwargs={"data_files": str(data), "cache_dir": str(tmp_path / "hf-cache")})
    assert list(source.documents()) == ["alpha", "beta"]
    assert source.cache_key().startswith("hf-json-")


def test_hf_source_explains_failures(hf_offline, tmp_path):
    source = HFSource(name="nobody/no-such-dataset", load_kwargs={"cache_dir": str(tmp_path / "hf-cache")})
    with pytest.raises(RuntimeError, match="HF_DATASETS_OFFLINE is set"):
        list(source.documents())
    with pytest.raises(ValueError, match=r"data\.source_args\.name"):
        HFSource()


def test_build_source_errors_name_the_choices_and_bad_arguments():
    with pytest.raises(ValueError, match=r"\['stdlib', 'files', 'hf'\]"):
        build_source("wikipedia")
    with pytest.raises(TypeError, match="bad data.source_args for source 'stdlib'"):
        build_source("stdlib", paths=["x"])
    with pytest.raises(ValueError, match="max_docs"):
        build_source("stdlib", max_docs=0)
