// The candlestick chart and its ticks histogram (TradingView Lightweight Charts,
// vendored: window.LightweightCharts from the standalone build).
//
// One bar per candle: a candle topic republishes the open bucket as it changes
// (SPEC section 1), and each version replaces the bar of its bucket in place.

const UP = "#26a69a";
/** Bars kept: a page left open on 1s candles would otherwise grow by 86,400 bars a day. */
export const MAX_BARS = 20000;
const DOWN = "#ef5350";

/** Most decimals a price gets (a price below 1e-5 keeps fewer than five significant digits). */
export const MAX_DIGITS = 10;

/**
 * Decimals for an instrument priced about `price`: 2 from 1,000, 3 from 10, 5 from 1 (FX: 1.08501),
 * and below 1 enough for five significant digits after the leading zeros (0.000012340), at most MAX_DIGITS.
 */
export function priceDigits(price) {
  const p = Math.abs(price);
  if (!(p > 0) || !Number.isFinite(p)) return 2;
  if (p >= 1000) return 2;
  if (p >= 10) return 3;
  if (p >= 1) return 5;
  return Math.min(MAX_DIGITS, Math.max(5, Math.floor(-Math.log10(p)) + 5));
}

/** 10^-digits as the nearest double ("1e-5"; 10 ** -5 is 0.000009999999999999999, which the axis would show). */
function step(digits) {
  return Number(`1e-${digits}`);
}

export class CandleChart {
  /** `maxBars`: bars kept (the oldest go first); trimmed in steps of a twentieth, not on every new bar. */
  constructor(element, { maxBars = MAX_BARS } = {}) {
    this.maxBars = maxBars;
    this.trimSlack = Math.max(1, Math.floor(maxBars / 20));
    const LWC = window.LightweightCharts;
    this.chart = LWC.createChart(element, {
      autoSize: true,
      layout: {
        background: { type: "solid", color: "#131722" },
        textColor: "#d1d4dc",
        // NOTE: the logo injects a <style> element, which the page's CSP refuses;
        // the attribution TradingView asks for is in the page's footer instead.
        attributionLogo: false,
      },
      grid: { vertLines: { color: "#1f2433" }, horzLines: { color: "#1f2433" } },
      timeScale: { timeVisible: true, secondsVisible: true, borderColor: "#2a2e39" },
      rightPriceScale: { borderColor: "#2a2e39" },
    });
    this.candles = this.chart.addSeries(LWC.CandlestickSeries, {
      upColor: UP, downColor: DOWN, borderVisible: false, wickUpColor: UP, wickDownColor: DOWN,
    });
    this.ticks = this.chart.addSeries(LWC.HistogramSeries, { priceFormat: { type: "volume" }, title: "ticks" }, 1);
    const panes = this.chart.panes();
    if (panes.length > 1) {
      panes[0].setStretchFactor(4);
      panes[1].setStretchFactor(1);
    }
    this.byTime = new Map(); // bar time (s) -> candle payload
    this.lastTime = null;
    this.precision = null;
  }

  static bar(candle) {
    return { time: candle.ts_ms / 1000, open: candle.open, high: candle.high, low: candle.low, close: candle.close };
  }

  static volume(candle) {
    return { time: candle.ts_ms / 1000, value: candle.ticks, color: candle.close >= candle.open ? UP + "80" : DOWN + "80" };
  }

  /** The price axis's format from a price of the instrument: its digits, and a move of one in the last. */
  setPrecision(price) {
    const precision = priceDigits(price);
    if (precision === this.precision) return;
    this.precision = precision;
    this.candles.applyOptions({ priceFormat: { type: "price", precision, minMove: step(precision) } });
  }

  /** The candlestick series' price format ({type, precision, minMove}). */
  priceFormat() {
    const { type, precision, minMove } = this.candles.options().priceFormat;
    return { type, precision, minMove };
  }

  /** `price` as the price axis labels it. */
  formatPrice(price) {
    return this.candles.priceFormatter().format(price);
  }

  /** How many bars the chart holds. */
  get size() {
    return this.byTime.size;
  }

  /** Replace everything with `candles` (payloads, any order; the newest maxBars). */
  setHistory(candles) {
    const newest = [...candles].sort((a, b) => a.ts_ms - b.ts_ms).slice(-this.maxBars);
    this.byTime = new Map(newest.map((c) => [c.ts_ms / 1000, c]));
    this.redraw();
    this.chart.timeScale().fitContent();
  }

  clear() {
    this.setHistory([]);
  }

  redraw() {
    const sorted = [...this.byTime.values()].sort((a, b) => a.ts_ms - b.ts_ms);
    if (sorted.length) this.setPrecision(sorted[sorted.length - 1].close);
    this.candles.setData(sorted.map(CandleChart.bar));
    this.ticks.setData(sorted.map(CandleChart.volume));
    this.lastTime = sorted.length ? sorted[sorted.length - 1].ts_ms / 1000 : null;
  }

  /** One candle version: updates its bar in place, or adds the bar of a new bucket. */
  apply(candle) {
    const time = candle.ts_ms / 1000;
    this.byTime.set(time, candle);
    if (this.byTime.size > this.maxBars + this.trimSlack) {
      this.trim();
    } else if (this.lastTime === null || time >= this.lastTime) {
      if (this.lastTime === null) this.setPrecision(candle.close);
      this.candles.update(CandleChart.bar(candle));
      this.ticks.update(CandleChart.volume(candle));
      this.lastTime = time;
    } else {
      this.redraw(); // a late version of an older bucket: rare, rebuild the series
    }
  }

  /** Drop the oldest bars down to maxBars and rebuild the series. */
  trim() {
    const times = [...this.byTime.keys()].sort((a, b) => a - b);
    for (const t of times.slice(0, times.length - this.maxBars)) this.byTime.delete(t);
    this.redraw();
  }

  /** The bars the chart's candlestick series holds (read back from the series itself). */
  bars() {
    return this.candles.data().map((b) => ({ time: b.time, open: b.open, high: b.high, low: b.low, close: b.close }));
  }

  volumes() {
    return this.ticks.data().map((b) => ({ time: b.time, value: b.value }));
  }
}
