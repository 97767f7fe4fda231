from __future__ import annotations

import pytest

from microsaga import (
    STATUS_STRING,
    STRING_STATUS,
    ConfigurationError,
    Message,
    Metadata,
    Status,
    message,
)


class TestMetadata:
    def test_keys_are_case_insensitive_and_keep_their_first_spelling(self) -> None:
        md = Metadata({"Content-Type": "application/json"})
        assert md["content-type"] == "application/json"
        assert "CONTENT-TYPE" in md
        assert list(md) == ["Content-Type"]

    def test_several_values_per_key(self) -> None:
        md = Metadata({"X-Tag": ["a", "b"]})
        md.add("x-tag", "c")
        assert md.getall("X-TAG") == ["a", "b", "c"]
        assert md["x-tag"] == "a"
        assert len(md) == 1
        md.set("X-Tag", "z")
        assert md.getall("x-tag") == ["z"]

    def test_missing_key(self) -> None:
        md = Metadata()
        assert md.getall("nope") == []
        assert md.get("nope") is None
        assert md.get("nope", "d") == "d"
        with pytest.raises(KeyError):
            md["nope"]

    def test_copy_is_independent(self) -> None:
        md = Metadata({"a": "1"})
        other = md.copy()
        other.add("a", "2")
        assert md.getall("a") == ["1"]
        assert other.getall("a") == ["1", "2"]
        assert md == {"A": "1"}

    def test_copies_stay_independent_both_ways_and_through_every_change(self) -> None:
        # copies share their tables until one of them changes (copy on write)
        md = Metadata({"a": "1", "b": "2"})
        copy, built = md.copy(), Metadata(md)
        md.set("a", "x")
        del md["b"]
        assert copy.to_dict() == {"a": ["1"], "b": ["2"]}
        assert built.to_dict() == {"a": ["1"], "b": ["2"]}
        built.add("c", "3")
        assert copy.to_dict() == {"a": ["1"], "b": ["2"]}
        assert md.to_dict() == {"a": ["x"]}

    def test_frozen_form_follows_every_change_and_reads_back(self) -> None:
        md = Metadata([("X-Tag", "1"), ("x-tag", "2")])
        frozen = md.frozen()
        assert frozen == (("x-tag", "X-Tag", ("1", "2")),)
        again = Metadata.from_frozen(frozen)
        assert again == md
        assert list(again) == ["X-Tag"]
        copy = md.copy()
        md.add("B", "3")
        assert md.frozen() == (("x-tag", "X-Tag", ("1", "2")), ("b", "B", ("3",)))
        assert copy.frozen() == frozen
        again.set("x-tag", "z")
        assert again.frozen() == (("x-tag", "X-Tag", ("z",)),)
        del md["x-tag"]
        assert md.frozen() == (("b", "B", ("3",)),)

    def test_to_dict(self) -> None:
        md = Metadata([("A", "1"), ("a", "2"), ("B", "3")])
        assert md.to_dict() == {"A": ["1", "2"], "B": ["3"]}

    @pytest.mark.parametrize(
        ("mapping", "words"),
        [
            ({"X-Count": 1}, "header 'X-Count': values must be str or a list of str, not int"),
            ({"X-Raw": b"xy"}, "not bytes (decode bytes first)"),
            ({"X-Tag": ["a", 2]}, "header 'X-Tag': values must be str or a list of str, not int"),
            ({"X-None": None}, "not NoneType"),
        ],
    )
    def test_values_that_are_not_text_are_refused_naming_the_key(
        self, mapping: dict[str, object], words: str
    ) -> None:
        with pytest.raises(TypeError) as err:
            Metadata(mapping)  # type: ignore[arg-type]
        assert words in str(err.value)
        with pytest.raises(TypeError, match="X-Count"):
            Message(b"", {"X-Count": 1})

    def test_add_and_set_refuse_bytes(self) -> None:
        md = Metadata({"a": ("1", "2")})
        for method in (md.add, md.set):
            with pytest.raises(TypeError, match=r"header 'a'.*bytes"):
                method("a", b"3")  # type: ignore[arg-type]
        assert md.getall("a") == ["1", "2"]


class TestMessage:
    def test_bytes_are_kept_byte_for_byte(self) -> None:
        raw = b'{ "b": 1,   "a": 2 }'
        assert Message(raw).body == raw

    @pytest.mark.parametrize(
        ("value", "body"),
        [
            ({"a": 1}, b'{"a":1}'),
            ([1, 2], b"[1,2]"),
            ("text", b'"text"'),
            (3, b"3"),
            (True, b"true"),
            (None, b""),
        ],
    )
    def test_other_values_are_json_encoded(self, value: object, body: bytes) -> None:
        assert Message(value).body == body

    def test_json_decodes_and_empty_is_none(self) -> None:
        assert Message({"x": [1]}).json() == {"x": [1]}
        assert Message().json() is None

    def test_json_of_invalid_body_says_so(self) -> None:
        with pytest.raises(ValueError, match="not valid JSON"):
            Message(b"{oops").json()

    def test_header_from_dict(self) -> None:
        msg = Message(b"{}", {"Trace": "t1", "Multi": ["1", "2"]})
        assert isinstance(msg.header, Metadata)
        assert msg.header.getall("multi") == ["1", "2"]

    def test_unencodable_body_is_a_clear_type_error(self) -> None:
        with pytest.raises(TypeError, match="cannot encode object as JSON"):
            Message(object())

    @pytest.mark.parametrize(
        ("value", "where"),
        [
            ({"x": float("nan")}, "nan at `$.x`"),
            (float("inf"), "inf at `$`"),
            ({"a": [1, {"b": -float("inf")}]}, "-inf at `$.a[1].b`"),
            ([1.5, (2.0, float("nan"))], "nan at `$[1][1]`"),
        ],
    )
    def test_nan_or_infinity_anywhere_is_refused_not_made_null(
        self, value: object, where: str
    ) -> None:
        with pytest.raises(ConfigurationError, match="JSON has no NaN or infinity") as err:
            Message(value)
        assert err.value.setting == "body"
        assert where in str(err.value)

    def test_null_and_the_text_null_stay_allowed(self) -> None:
        assert Message({"x": None, "s": "null"}).body == b'{"x":null,"s":"null"}'

    @pytest.mark.parametrize(
        ("value", "where"),
        [
            # an int msgpack cannot hold: the quick look cannot be made, the walk is
            ({"n": 2**70, "x": [None, float("nan")]}, "nan at `$.x[1]`"),
            # NaN among many nulls
            (
                {"rows": [{"v": None} for _ in range(1000)] + [{"v": float("-inf")}]},
                "$.rows[1000].v",
            ),
        ],
    )
    def test_nan_is_found_however_the_body_is_made(self, value: object, where: str) -> None:
        with pytest.raises(ConfigurationError, match="JSON has no NaN or infinity") as err:
            Message(value)
        assert where in str(err.value)

    def test_bytes_that_look_like_nan_to_the_quick_look_are_taken(self) -> None:
        # the bytes of a float64 NaN, as msgpack writes one, inside a bytes value
        raw = b"\xcb\x7f\xf8" + bytes(6)
        msg = Message({"x": None, "raw": raw})
        assert msg.json() == {"x": None, "raw": "y3/4AAAAAAAA"}

    def test_a_body_of_nulls_without_nan_is_not_walked_in_python(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # the walk costs 50x the encoding on a large body: the quick look answers
        def walk(value: object) -> None:
            raise AssertionError("walked")

        monkeypatch.setattr(message, "_non_finite", walk)
        rows = [{"id": i, "note": None, "price": 1.5} for i in range(1000)]
        assert Message({"rows": rows}).json()["rows"][999] == {
            "id": 999,
            "note": None,
            "price": 1.5,
        }


class TestStatus:
    def test_values_and_strings_as_upstream(self) -> None:
        assert [int(s) for s in Status] == list(range(10))
        assert str(Status.RUNNING) == "StatusRunning"
        assert (str(Status.WAITING), str(Status.SKIPPED)) == ("StatusWaiting", "StatusSkipped")
        assert Status.parse("StatusSkipped") is Status.SKIPPED
        assert f"{Status.SUSPEND}" == "StatusSuspend"
        assert str(Status.COMPENSATED) == "StatusCompensated"
        assert STATUS_STRING[Status.PENDING] == "StatusPending"
        assert STRING_STATUS["StatusAborted"] is Status.ABORTED

    def test_parse(self) -> None:
        assert Status.parse("StatusFailure") is Status.FAILURE
        assert Status.parse("StatusCompensating") is Status.COMPENSATING
        assert Status.parse("whatever") is Status.PENDING
        assert Status.parse("RUNNING") is Status.PENDING  # only "StatusX" strings, as upstream
        assert Status.lookup("running") is Status.RUNNING
        assert Status.lookup("StatusSuspend") is Status.SUSPEND
        assert Status.lookup("nope") is None


def test_errors_default_to_their_docstring_and_have_codes() -> None:
    import microsaga as ms

    assert str(ms.ExecutionNotFoundError()) == "No execution has that id."
    assert str(ms.MissingClientError()) == "client not set"
    assert str(ms.StepNotExistsError("x")) == "step not exists: x"
    assert ms.CycleError().code == "cycle"
    codes = {
        cls.code
        for cls in (
            ms.DefinitionError,
            ms.StepNotExistsError,
            ms.CycleError,
            ms.DuplicateStepError,
            ms.MissingClientError,
            ms.WorkflowNotFoundError,
            ms.ExecutionNotFoundError,
            ms.ExecutionFailedError,
            ms.InvalidTransitionError,
            ms.StoreError,
            ms.TransportError,
        )
    }
    assert len(codes) == 11  # every class its own stable code
    assert all(
        issubclass(getattr(ms, n), ms.MicrosagaError) for n in ms.__all__ if n.endswith("Error")
    )
    assert sorted(ms.__all__) == sorted(set(ms.__all__))
