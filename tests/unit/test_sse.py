"""The client's stream reading: SSE by the spec, and tokens counted from usage, not from chunks."""

import orjson
import pytest

from expert_router.loadgen.records import RequestRecord
from expert_router.loadgen.selfcheck import self_check
from expert_router.loadgen.sse import EventStream, StreamAccount, spread
from expert_router.loadgen.users import Work
from expert_router.loadgen.workload import WorkItem


def events_of(*pieces: bytes) -> list[bytes]:
    stream = EventStream()
    events = [e for piece in pieces for e in stream.feed(piece)]
    return events + stream.close()


def test_data_with_or_without_a_space_comments_and_line_endings():
    assert events_of(b"data: a\n\ndata:b\r\n\r\n: keep-alive\n\ndata:  c\r\rdata: d\n") == [b"a", b"b", b" c", b"d"]


def test_events_and_crlf_split_across_reads():
    assert events_of(b"da", b'ta: {"x"', b": 1}\r", b"\n\r", b"\ndata: 2\n", b"\n") == [b'{"x": 1}', b"2"]


def test_multi_line_data_is_joined():
    assert events_of(b"data: one\ndata: two\n\n") == [b"one\ntwo"]


def record() -> RequestRecord:
    return RequestRecord(
        request_id=0, workload_id=0, user_id=0, cluster_drawn=0, prompt_tokens=1, max_tokens=99, t_scheduled=0.0
    )


def chunk(text: str, usage: int | None = None, finish: str | None = None) -> bytes:
    event: dict = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    if usage is not None:
        event["usage"] = {"completion_tokens": usage}
    return orjson.dumps(event)


def test_continuous_usage_counts_packed_and_empty_chunks_exactly():
    r = record()
    account = StreamAccount(r, chat=False)
    for t, payload in enumerate([chunk(" a b c", 3), chunk("", 4), chunk(" d e", 6, "stop")]):
        account.add(payload, float(t))
    account.add(b"[DONE]", 3.0)
    account.finish()
    assert r.chunk_tokens == [3, 1, 2] and r.output_tokens == 6 and r.token_source == "usage-continuous"
    assert r.t_first_token == 0.0 and r.finish_reason == "stop"


def test_final_usage_is_spread_over_the_chunks():
    r = record()
    account = StreamAccount(r, chat=False)
    for t, payload in enumerate([chunk(" a b c d"), chunk(" e f g h"), chunk(" i j", finish="length")]):
        account.add(payload, float(t))
    account.add(orjson.dumps({"choices": [], "usage": {"completion_tokens": 10}}), 3.0)
    account.finish()
    assert sum(r.chunk_tokens) == 10 and r.token_source == "usage-spread" and r.output_tokens == 10


def test_no_usage_counts_one_token_per_chunk_with_text():
    r = record()
    account = StreamAccount(r, chat=True)
    role = orjson.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    account.add(role, 0.0)
    account.add(orjson.dumps({"choices": [{"index": 0, "delta": {"content": "hi"}}]}), 0.5)
    account.add(b"[DONE]", 0.6)
    account.finish()
    assert r.chunk_tokens == [0, 1] and r.t_first_token == 0.5 and r.token_source == "chunks" and r.ok


def test_a_reasoning_models_thinking_and_tool_calls_are_generated_tokens():
    """Without usage per chunk (SGLang, OpenAI), only `content` had weight: a reasoning model's time to
    first token was measured to its first answer token, after all of its thinking."""
    r = record()
    account = StreamAccount(r, chat=True)
    deltas = [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Let me think"},
        {"reasoning": " more"},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
        {"content": "Done"},
    ]
    for t, delta in enumerate(deltas):
        account.add(orjson.dumps({"choices": [{"index": 0, "delta": delta}]}), float(t))
    account.add(orjson.dumps({"choices": [], "usage": {"completion_tokens": 8}}), 5.0)
    account.finish()
    assert r.t_first_token == 1.0 and r.chunk_tokens[0] == 0 and all(n > 0 for n in r.chunk_tokens[1:])
    assert sum(r.chunk_tokens) == 8


def test_a_chunk_with_only_a_finish_reason_is_no_token_without_usage():
    """OpenAI-style streams end with an empty delta and the finish reason: counted as a token, every
    answer had one more (and a one-token answer got a TPOT)."""
    r = record()
    account = StreamAccount(r, chat=True)
    for t, delta in enumerate([{"content": "a"}, {"content": " b"}]):
        account.add(orjson.dumps({"choices": [{"index": 0, "delta": delta}]}), float(t))
    account.add(b"", 1.5)  # an event with empty data (`data:` alone) is allowed, and says nothing
    account.add(orjson.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}), 2.0)
    account.finish()
    assert r.ok and r.output_tokens == 2 and r.chunk_tokens == [1, 1, 0] and r.token_source == "chunks"


def test_error_events_and_empty_streams_fail_the_request():
    r = record()
    account = StreamAccount(r, chat=False)
    account.add(b'{"error": {"message": "boom"}}', 0.0)
    account.finish()
    assert r.status == "error" and r.error == "boom"
    empty = record()
    StreamAccount(empty, chat=False).finish()
    assert empty.status == "error"


def test_spread_adds_up():
    assert spread(10, [1, 1, 1]) == [4, 3, 3] or sum(spread(10, [1, 1, 1])) == 10
    assert spread(0, [1, 0]) == [0, 0] and spread(5, [0, 0]) == [0, 0]


def test_processes_take_disjoint_strides_of_the_workload():
    items = [WorkItem(i, 0, f"p{i}", 1, 1) for i in range(10)]
    seen = []
    for p in range(3):
        work = Work(items, None, p, 3)
        seen.append([work.next()[1].id for _ in range(len(items[p::3]))])  # type: ignore[index]
    assert sorted(i for ids in seen for i in ids) == list(range(10))
    ids = [Work(items, None, p, 3).next()[0] for p in range(3)]  # type: ignore[index]
    assert ids == [0, 1, 2]


def test_self_check_catches_a_single_stall_that_a_percentile_hides():
    lag = [0.1] * 10_000 + [8000.0]
    check = self_check(lag, cpu_share=0.2, run_s=100.0)
    assert check.lag_p99_ms < 1 and not check.valid
    assert any("stalled" in r for r in check.reasons)


def test_a_run_where_most_requests_failed_is_never_valid():
    check = self_check([0.1] * 100, cpu_share=0.1, run_s=1.0, failed=320, requests=320)
    assert not check.valid and any("failed" in r for r in check.reasons)
    assert self_check([0.1] * 100, cpu_share=0.1, run_s=1.0, failed=0, requests=10).valid


@pytest.mark.parametrize("lag_ms", [[0.0], [1.0, 2.0]])
def test_a_quiet_run_is_valid(lag_ms):
    assert self_check(lag_ms, cpu_share=0.1, run_s=10.0, requests=5).valid


def test_a_stream_that_ends_before_its_answer_does_fails_the_request():
    """Tokens, then a clean end of the HTTP message with neither a finish_reason nor [DONE]: the answer
    was cut short, and had counted as a success with a short answer's tokens and times."""
    cut = record()
    account = StreamAccount(cut, chat=False)
    for t, text in enumerate([" a", " b"]):
        account.add(chunk(text), float(t))
    account.finish()
    assert cut.status == "error" and "cut short" in (cut.error or "")
    for ending in ([chunk("", finish="stop")], [b"[DONE]"]):  # either says the answer is whole
        whole = record()
        account = StreamAccount(whole, chat=False)
        for t, payload in enumerate([chunk(" a"), chunk(" b"), *ending]):
            account.add(payload, float(t))
        account.finish()
        assert whole.ok and whole.output_tokens == 2
