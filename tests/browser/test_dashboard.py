"""The dashboard at ``/`` in headless Chromium against a real ``gauss-serve`` fed over TCP (issue 15)."""

from __future__ import annotations

import time
from typing import Any, Callable

from support import wait_until
from support.browser import MINUTE, Dashboard, Page, history, quote

SYMBOLS = ["EURUSD", "USDJPY", "BTC/USD"]
TOKEN = "dash-s3cret"


def _minute_start(minutes_back: int) -> int:
    now = int(time.time() * 1000)
    return now - now % MINUTE - minutes_back * MINUTE


def _fed(make_dashboard: Callable[..., Dashboard], minutes: int = 20, **options: Any) -> tuple[Dashboard, int]:
    """A server holding ``minutes`` one-minute buckets of quotes for SYMBOLS, the last one ending a minute ago."""
    dashboard = make_dashboard(**options)
    start = _minute_start(minutes)
    dashboard.feed(history(SYMBOLS, start, minutes))
    wait_until(lambda: len(dashboard.candles("ohlc.1m", "EURUSD")) == minutes, what="candles stored")
    return dashboard, start


def _shows_rest_candles(page: Page, dashboard: Dashboard, topic: str, key: str) -> None:
    """The chart's series holds exactly REST's candles of (topic, key), same OHLC values."""
    expected = dashboard.candles(topic, key)
    assert expected
    wait_until(lambda: page.bars() == expected, timeout=10, what=f"chart == REST for {topic} {key}")
    volumes = page.call("volumes()")
    ticks = [r["data"]["ticks"] for r in dashboard.get(f"/api/topics/{topic}", key=key, limit=100000)["records"]]
    assert [v["value"] for v in volumes] == ticks


def _mid(q: dict[str, Any]) -> float:
    """The candle price of a quote, computed as the server does."""
    return (q["bid"] + q["ask"]) / 2  # type: ignore[no-any-return]


def _text(page: Page, selector: str) -> str:
    return str(page.page.text_content(selector) or "").strip()


def test_page_loads_clean_lists_symbols_and_charts_what_rest_holds(
    make_dashboard: Callable[..., Dashboard], open_page: Callable[[str], Page]
) -> None:
    dashboard, start = _fed(make_dashboard)
    page = open_page(dashboard.base + "/")
    page.wait("d.status().loads > 0 && d.bars().length > 0")

    assert page.page.eval_on_selector_all("#symbol option", "els => els.map(e => e.value)") == sorted(SYMBOLS)
    assert page.page.eval_on_selector_all("#timeframe option", "els => els.map(e => e.value)") == ["ohlc.1m", "ohlc.5m"]
    # No hash: ohlc.1m and the first symbol, written into the URL (a '/' in a key is encoded).
    assert page.call("view()") == {"topic": "ohlc.1m", "key": "BTC/USD"}
    assert page.page.url.endswith("/#ohlc.1m/BTC%2FUSD")
    _shows_rest_candles(page, dashboard, "ohlc.1m", "BTC/USD")

    # The ticker starts from the newest quote of the symbol.
    last = [q for q in history(SYMBOLS, 0, 20) if q["symbol"] == "BTC/USD"][-1]
    assert _text(page, "#ticker-bid") == f"{last['bid']:.3f}"
    assert _text(page, "#ticker-spread") == "0.00020"  # finer than the price's 3 digits
    # Topics table and health, refreshed every few seconds (rates after the second refresh).
    wait_until(lambda: _text(page, "#health") == "health: ok", what="health shown")
    rows = page.page.eval_on_selector_all("#topics tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    by_name = {row[0]: row for row in rows}
    assert set(by_name) == {"quotes.raw", "ohlc.1m", "ohlc.5m"}
    assert by_name["quotes.raw"][1:4] == ["memory", "quote", f"{dashboard.records('quotes.raw'):,}"]
    assert by_name["ohlc.1m"][1:3] == ["file", "candle"]
    page.wait("document.querySelector('#topics tbody td.num:last-child').textContent !== '–'", timeout_s=10)
    # quotes.raw's rate (from /metrics) shows what was just fed, per second.
    dashboard.feed([quote("USDJPY", 101.0, start + 19 * MINUTE + i) for i in range(60)])
    page.wait(
        "[...document.querySelectorAll('#topics tbody tr')].some("
        "r => r.cells[0].textContent === 'quotes.raw' && Number(r.cells[4].textContent) > 0)",
        timeout_s=10,
    )
    # A symbol that arrives later joins the picker at the next refresh.
    dashboard.feed([quote("GBPUSD", 1.25, start + 19 * MINUTE + 30_000)])
    page.wait("[...document.querySelectorAll('#symbol option')].some(o => o.value === 'GBPUSD')", timeout_s=10)
    assert page.call("view()") == {"topic": "ohlc.1m", "key": "BTC/USD"}
    page.screenshot("01-loaded")

    # The symbol picker changes the view and the URL; the URL opens the same view elsewhere.
    page.page.select_option("#symbol", "EURUSD")
    page.wait("d.view().key === 'EURUSD' && d.status().loads >= 2")
    assert page.page.url.endswith("/#ohlc.1m/EURUSD")
    _shows_rest_candles(page, dashboard, "ohlc.1m", "EURUSD")
    linked = open_page(dashboard.base + "/#ohlc.5m/USDJPY")
    linked.wait("d.status().loads > 0")
    assert linked.call("view()") == {"topic": "ohlc.5m", "key": "USDJPY"}
    assert _text(linked, "#timeframe option:checked") == "5m"
    _shows_rest_candles(linked, dashboard, "ohlc.5m", "USDJPY")
    linked.screenshot("02-linked-5m-USDJPY")

    for p in (page, linked):
        assert p.console_errors == []
        assert p.failed_requests == []
        # Nothing from the internet: every request (page, modules, library, REST, /ws) goes to the server.
        origins = {url.split("/", 3)[2] for url in p.requested}
        assert origins == {f"127.0.0.1:{dashboard.api_port}"}, origins
        assert any(url.startswith(f"ws://127.0.0.1:{dashboard.api_port}/ws") for url in p.requested)


def test_a_new_high_moves_the_live_bar_in_place_and_the_next_bucket_adds_one_bar(
    make_dashboard: Callable[..., Dashboard], open_page: Callable[[str], Page]
) -> None:
    dashboard, start = _fed(make_dashboard)
    page = open_page(dashboard.base + "/#ohlc.1m/EURUSD")
    page.wait("d.status().ws === 'open' && d.status().loads > 0 && d.bars().length === 20")
    before = page.bars()
    last = before[-1]
    page.screenshot("03-before-live-quote")

    live_ts = start + 19 * MINUTE + 59_000  # still the last (open) bucket
    new_high = quote("EURUSD", last["high"] + 0.01, live_ts)
    high = _mid(new_high)
    dashboard.feed([new_high])
    sent = time.monotonic()
    page.wait(f"d.bars().length > 0 && d.bars()[d.bars().length - 1].high === {high!r}", timeout_s=2.0)
    assert time.monotonic() - sent < 2.0
    after = page.bars()
    assert len(after) == len(before), "an update of the open bucket must not add a bar"
    assert after[:-1] == before[:-1]
    assert after[-1] == {**last, "high": high, "close": high}
    page.wait(f"d.quote() && d.quote().ts_ms === {live_ts}", timeout_s=2.0)
    assert _text(page, "#ticker-bid") == f"{new_high['bid']:.5f}"
    assert _text(page, "#ticker-spread") == "0.00020"
    page.screenshot("04-new-high")

    next_quote = quote("EURUSD", high - 0.005, start + 20 * MINUTE + 1_000)
    next_mid = _mid(next_quote)
    dashboard.feed([next_quote])
    page.wait(f"d.bars().length === {len(before) + 1}", timeout_s=2.0)
    time.sleep(0.5)  # a second bar (a duplicate) would show up by now
    final = page.bars()
    assert len(final) == len(before) + 1
    assert final[-1] == {"time": (start + 20 * MINUTE) / 1000, "open": next_mid, "high": next_mid, "low": next_mid, "close": next_mid}
    _shows_rest_candles(page, dashboard, "ohlc.1m", "EURUSD")
    page.screenshot("05-next-bucket")
    assert page.console_errors == [] and page.failed_requests == []


def test_server_restart_under_the_page_reconnects_and_catches_up_without_duplicate_or_missing_bars(
    make_dashboard: Callable[..., Dashboard], open_page: Callable[[str], Page]
) -> None:
    dashboard, start = _fed(make_dashboard)
    page = open_page(dashboard.base + "/#ohlc.1m/EURUSD")
    page.wait("d.status().ws === 'open' && d.status().epoch && d.bars().length === 20")
    epoch = page.call("status()")["epoch"]
    assert epoch

    dashboard.stop()
    page.wait("d.status().ws !== 'open'", timeout_s=10)
    page.screenshot("06-server-down")
    dashboard.start()
    # While the page is still waiting to reconnect: two new buckets and an update of the old last one.
    later = [quote("EURUSD", 1.3, start + 19 * MINUTE + 59_500)]
    later += [quote("EURUSD", 1.2 + i / 1000, start + (20 + i // 3) * MINUTE + (i % 3) * 1000) for i in range(6)]
    later += [quote("USDJPY", 101.0, start + 21 * MINUTE)]
    dashboard.feed(later)
    wait_until(lambda: len(dashboard.candles("ohlc.1m", "EURUSD")) == 22, what="candles after restart")

    page.wait("d.status().ws === 'open' && d.status().connects >= 2", timeout_s=15)
    expected = dashboard.candles("ohlc.1m", "EURUSD")
    wait_until(lambda: page.bars() == expected, timeout=5, what="page caught up with REST")
    bars = page.bars()
    times = [b["time"] for b in bars]
    assert len(times) == len(set(times)) == 22, "no duplicate bar"
    assert times == [(start + i * MINUTE) / 1000 for i in range(22)], "no missing bar"
    status = page.call("status()")
    assert status["epoch"] == epoch, "a file-stored candle topic keeps its epoch: a resume, not a reset"
    assert status["loads"] == 1, "caught up over /ws (since_seq + epoch), not by reloading the history"
    # The ticker shows the newest quote, sent while the page was disconnected.
    page.wait(f"d.quote() && d.quote().ts_ms === {later[-2]['ts_ms']}", timeout_s=5)
    page.screenshot("07-after-restart")
    # Only the outage may have logged errors (refused connections while the server was down).
    assert all("ERR_CONNECTION_REFUSED" in e or "WebSocket" in e for e in page.console_errors), page.console_errors


def test_a_new_epoch_after_a_restart_resets_the_chart_to_what_the_server_holds(
    make_dashboard: Callable[..., Dashboard], open_page: Callable[[str], Page]
) -> None:
    dashboard, start = _fed(make_dashboard, minutes=10, candle_storage='type = "memory", capacity = 10000')
    page = open_page(dashboard.base + "/#ohlc.1m/EURUSD")
    page.wait("d.status().ws === 'open' && d.status().epoch && d.bars().length === 10")
    epoch = page.call("status()")["epoch"]

    dashboard.stop()  # memory candles: gone, and the topic's sequence restarts under a new epoch
    page.wait("d.status().ws !== 'open'", timeout_s=10)
    dashboard.start()
    dashboard.feed([quote("EURUSD", 1.5 + i / 100, start + (2 + 3 * i) * MINUTE) for i in range(3)])
    wait_until(lambda: len(dashboard.candles("ohlc.1m", "EURUSD")) == 3, what="candles after restart")

    page.wait("d.status().connects >= 2 && d.status().epoch !== " + repr(epoch), timeout_s=15)
    expected = dashboard.candles("ohlc.1m", "EURUSD")
    wait_until(lambda: page.bars() == expected, timeout=5, what="chart reset to the new epoch's candles")
    assert [b["time"] for b in page.bars()] == [(start + (2 + 3 * i) * MINUTE) / 1000 for i in range(3)]
    page.screenshot("08-reset-after-new-epoch")


def test_with_a_token_the_prompt_refuses_a_wrong_token_and_the_right_one_shows_the_chart(
    make_dashboard: Callable[..., Dashboard], open_page: Callable[[str], Page]
) -> None:
    dashboard, _ = _fed(make_dashboard, minutes=5, token=TOKEN)
    page = open_page(dashboard.base + "/#ohlc.1m/USDJPY")
    page.page.wait_for_selector("#token-dialog[open]", timeout=10_000)
    assert page.call("status()")["authNeeded"] is True
    assert page.bars() == []
    # The page says the API takes a token: the prompt comes before any request is refused.
    assert page.console_errors == [] and page.failed_requests == [], (page.console_errors, page.failed_requests)
    page.screenshot("09-token-prompt")

    page.page.fill("#token-input", "wrong-token")
    page.page.click("#token-submit")
    page.page.wait_for_selector("#token-message:not([hidden])", timeout=10_000)
    assert _text(page, "#token-message") == "That token was refused."
    assert page.page.is_visible("#token-dialog")
    assert page.bars() == []
    assert page.page.evaluate("() => sessionStorage.getItem('gauss.token')") is None, "a refused token is not kept"
    page.screenshot("10-token-refused")

    page.page.fill("#token-input", TOKEN)
    page.page.click("#token-submit")
    page.wait("!d.status().authNeeded && d.status().ws === 'open' && d.bars().length === 5")
    assert not page.page.is_visible("#token-dialog")
    assert page.page.evaluate("() => sessionStorage.getItem('gauss.token')") == TOKEN
    _shows_rest_candles(page, dashboard, "ohlc.1m", "USDJPY")
    # Live pushes arrive over /ws?token=: a quote in the open bucket moves the bar.
    last: Any = page.bars()[-1]
    higher = quote("USDJPY", last["high"] + 1, int(last["time"] * 1000) + 59_000)
    dashboard.feed([higher])
    page.wait(f"d.bars()[d.bars().length - 1].high === {_mid(higher)!r}", timeout_s=2.0)
    page.screenshot("11-token-accepted")
    assert all("401" in e for e in page.console_errors), page.console_errors

    # A token the server no longer takes (kept from before, say): refused, prompted for, and dropped.
    page.page.evaluate("() => sessionStorage.setItem('gauss.token', 'stale-token')")
    page.page.reload()
    page.page.wait_for_selector("#token-message:not([hidden])", timeout=10_000)
    assert _text(page, "#token-message") == "That token was refused."
    assert page.page.evaluate("() => sessionStorage.getItem('gauss.token')") is None


def test_the_chart_keeps_at_most_max_bars_the_newest_ones(
    make_dashboard: Callable[..., Dashboard], open_page: Callable[[str], Page]
) -> None:
    dashboard = make_dashboard()
    page = open_page(dashboard.base + "/")
    page.wait("d.status().loads >= 0")
    # The page's own chart module, on a chart of its own with a small bound (the page's is 20,000):
    # a history longer than the bound, then new buckets one at a time, as on a page left open.
    result = page.page.evaluate(
        """async () => {
            const { CandleChart, MAX_BARS: DEFAULT } = await import("/static/js/chart.js");
            const MAX_BARS = 400;
            const el = document.createElement("div");
            document.body.append(el);
            const chart = new CandleChart(el, { maxBars: MAX_BARS });
            const candle = (i) => {
                const p = 1 + (i % 100) / 1000;
                return { ts_ms: (1700000000 + i) * 1000, open: p, high: p, low: p, close: p, ticks: 1 };
            };
            const history = Array.from({ length: MAX_BARS + 500 }, (_, i) => candle(i));
            chart.setHistory(history.reverse());
            const afterHistory = chart.bars();
            const sizes = [];
            let i = MAX_BARS + 500;
            for (; i < MAX_BARS + 600; i++) {
                chart.apply(candle(i));
                sizes.push(chart.bars().length);
            }
            const bars = chart.bars();
            return { default: DEFAULT, max: MAX_BARS, slack: chart.trimSlack, historyLength: afterHistory.length, historyFirst: afterHistory[0].time,
                     maxSize: Math.max(...sizes), length: bars.length, first: bars[0].time,
                     last: bars[bars.length - 1].time, lastIndex: i - 1, volumes: chart.volumes().length };
        }"""
    )
    max_bars = result["max"]
    assert result["historyLength"] == max_bars
    assert result["historyFirst"] == 1700000000 + 500, "the history keeps its newest bars"
    assert result["default"] == 20000 and result["slack"] == 20
    assert result["maxSize"] == max_bars + 20, "bounded while it runs, trimmed in steps"
    assert result["length"] <= max_bars + 20 and result["volumes"] == result["length"]
    assert result["last"] == 1700000000 + result["lastIndex"]
    assert result["first"] == result["last"] - result["length"] + 1, "the oldest bars went, the newest stayed"


# --- audit findings (issue 15, second audit) ------------------------------------------------------

_EMPTY_ON_TOP = """() => {
    const el = document.getElementById("chart-empty");
    if (el.hidden) return false;
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height) return false;
    const top = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
    return top !== null && (top === el || el.contains(top));
}"""


def _empty_shown(page: Page) -> bool:
    """``#chart-empty`` shown and on top: what the browser hits at its centre is the message, not the chart's canvas."""
    return bool(page.page.evaluate(_EMPTY_ON_TOP))


def _empty_hidden(page: Page) -> bool:
    return bool(page.page.evaluate("() => document.getElementById('chart-empty').hidden")) and not page.page.is_visible(
        "#chart-empty"
    )


def _options(page: Page, selector: str) -> list[str]:
    return page.page.eval_on_selector_all(f"{selector} option", "els => els.map(e => e.value)")  # type: ignore[no-any-return]


def test_without_candles_the_empty_message_is_on_top_of_the_chart_and_goes_with_the_first_bar(
    make_dashboard: Callable[..., Dashboard], open_page: Callable[[str], Page]
) -> None:
    dashboard = make_dashboard()
    page = open_page(dashboard.base + "/")
    page.wait("d.view().topic === 'ohlc.1m'")
    wait_until(lambda: _empty_shown(page), timeout=5, what="'No candles yet' shown above the chart")
    page.screenshot("12-no-candles")

    start = _minute_start(3)
    dashboard.feed(history(["EURUSD"], start, 3))
    page.wait("d.view().key === 'EURUSD' && d.bars().length === 3", timeout_s=10)  # the next refresh finds it
    wait_until(lambda: _empty_hidden(page), timeout=2, what="the message hidden once there are bars")
    assert page.console_errors == [] and page.failed_requests == []


def test_a_link_to_a_symbol_the_server_does_not_hold_yet_keeps_it_and_shows_its_first_candle(
    make_dashboard: Callable[..., Dashboard], open_page: Callable[[str], Page]
) -> None:
    dashboard = make_dashboard()
    dashboard.feed([quote("USDJPY", 101.0, _minute_start(1))])
    wait_until(lambda: len(dashboard.candles("ohlc.1m", "USDJPY")) == 1, what="USDJPY stored")
    page = open_page(dashboard.base + "/#ohlc.1m/EURUSD")
    page.wait("d.status().loads > 0")
    assert page.call("view()") == {"topic": "ohlc.1m", "key": "EURUSD"}
    assert page.page.url.endswith("/#ohlc.1m/EURUSD"), page.page.url
    assert _options(page, "#symbol") == ["EURUSD", "USDJPY"]
    assert page.page.input_value("#symbol") == "EURUSD"
    wait_until(lambda: _empty_shown(page), timeout=5, what="the empty message for the linked symbol")
    time.sleep(3.5)  # a refresh of the pickers (every 3 s) keeps the link too
    assert page.page.url.endswith("/#ohlc.1m/EURUSD") and page.page.input_value("#symbol") == "EURUSD"
    page.screenshot("13-linked-symbol-not-yet-held")

    start = _minute_start(2)
    dashboard.feed(history(["EURUSD"], start, 2))
    wait_until(lambda: len(dashboard.candles("ohlc.1m", "EURUSD")) == 2, what="EURUSD stored")
    _shows_rest_candles(page, dashboard, "ohlc.1m", "EURUSD")
    wait_until(lambda: _empty_hidden(page), timeout=2, what="the message hidden once EURUSD has bars")
    assert page.page.url.endswith("/#ohlc.1m/EURUSD"), page.page.url
    assert page.call("view()") == {"topic": "ohlc.1m", "key": "EURUSD"}

    # The user's own picker change is what rewrites the hash.
    page.page.select_option("#symbol", "USDJPY")
    page.wait("d.view().key === 'USDJPY' && d.bars().length === 1")
    assert page.page.url.endswith("/#ohlc.1m/USDJPY")
    assert page.console_errors == [] and page.failed_requests == []


def test_a_new_epoch_without_data_shows_the_empty_message_and_clears_the_ticker(
    make_dashboard: Callable[..., Dashboard], open_page: Callable[[str], Page]
) -> None:
    dashboard, start = _fed(make_dashboard, minutes=3, candle_storage='type = "memory", capacity = 10000')
    page = open_page(dashboard.base + "/#ohlc.1m/EURUSD")
    page.wait("d.status().ws === 'open' && d.status().epoch && d.bars().length === 3 && d.quote()")
    assert _text(page, "#ticker-bid") != "–"
    epoch = page.call("status()")["epoch"]

    dashboard.stop()  # memory quotes and candles: gone; nothing is fed after the restart
    page.wait("d.status().ws !== 'open'", timeout_s=10)
    dashboard.start()
    page.wait("d.status().connects >= 2 && d.status().epoch !== " + repr(epoch), timeout_s=15)
    page.wait("d.bars().length === 0 && d.quote() === null", timeout_s=5)
    wait_until(lambda: _empty_shown(page), timeout=5, what="the empty message after the reset")
    assert [_text(page, f"#ticker-{k}") for k in ("bid", "ask", "spread")] == ["–", "–", "–"]
    time.sleep(3.5)  # a refresh of the pickers: the server holds no symbol, the page keeps its own
    assert _options(page, "#symbol") == ["EURUSD"] and page.page.input_value("#symbol") == "EURUSD"
    assert page.page.url.endswith("/#ohlc.1m/EURUSD")
    page.screenshot("14-new-epoch-no-data")

    fresh = quote("EURUSD", 1.25, _minute_start(0) + 1_000)
    dashboard.feed([fresh])
    page.wait(f"d.bars().length === 1 && d.quote() && d.quote().ts_ms === {fresh['ts_ms']}", timeout_s=5)
    wait_until(lambda: _empty_hidden(page), timeout=2, what="the message hidden with the first bar")
    assert _text(page, "#ticker-bid") == f"{fresh['bid']:.5f}"


def test_small_prices_keep_their_significant_digits_in_the_ticker_and_on_the_price_axis(
    make_dashboard: Callable[..., Dashboard], open_page: Callable[[str], Page]
) -> None:
    dashboard = make_dashboard()
    ts = _minute_start(1)
    shib = [
        {**quote("SHIBUSD", 0, ts + i), "bid": 0.00001234 + i * 1e-8, "ask": 0.00001240 + i * 1e-8} for i in range(3)
    ]
    dashboard.feed([*shib, quote("EURUSD", 1.08501, ts + 10)])
    wait_until(lambda: len(dashboard.candles("ohlc.1m", "SHIBUSD")) == 1, what="SHIBUSD stored")
    page = open_page(dashboard.base + "/#ohlc.1m/SHIBUSD")
    page.wait(f"d.bars().length === 1 && d.quote() && d.quote().ts_ms === {ts + 2}")
    shown = [_text(page, f"#ticker-{k}") for k in ("bid", "ask", "spread")]
    assert shown == ["0.000012360", "0.000012420", "0.000000060"]
    # The chart's price axis formats with the same digits (its series' own formatter).
    assert page.call("priceFormat()") == {"type": "price", "precision": 9, "minMove": 1e-9}
    assert page.call("formatPrice(0.00001234)") == "0.000012340"
    page.screenshot("15-small-prices")

    page.page.select_option("#symbol", "EURUSD")  # normal FX: five decimals, as before
    page.wait("d.view().key === 'EURUSD' && d.bars().length === 1 && d.quote() !== null")
    assert [_text(page, f"#ticker-{k}") for k in ("bid", "ask", "spread")] == ["1.08491", "1.08511", "0.00020"]
    assert page.call("priceFormat()") == {"type": "price", "precision": 5, "minMove": 1e-5}
    assert page.call("formatPrice(1.08501)") == "1.08501"
    assert page.console_errors == [] and page.failed_requests == []
