// Numbers, money and times as the dashboard shows them: one locale (en-US) and UTC, so that every reader and every
// test sees the same text.

const integer = new Intl.NumberFormat("en-US");
const DAY = new Intl.DateTimeFormat("en-US", { month: "short", day: "numeric", timeZone: "UTC" });

export function count(n) {
  return integer.format(n ?? 0);
}

/** `3 requests`, `1 request`. */
export function plural(n, one, many) {
  return `${count(n)} ${n === 1 ? one : many}`;
}

/** Dollars with as many decimals as small sums need: $12.35, $0.0245, $0.000016. */
export function usd(value) {
  const v = value ?? 0;
  const digits = v === 0 || v >= 1 ? 2 : v >= 0.01 ? 4 : 6;
  return new Intl.NumberFormat("en-US", {
    style: "currency",
    currency: "USD",
    minimumFractionDigits: 2,
    maximumFractionDigits: digits,
  }).format(v);
}

export function ms(value) {
  return value === null || value === undefined ? "—" : `${integer.format(Math.round(value))} ms`;
}

/** An ISO time as `2026-12-07 14:05 UTC`, or `fallback` when there is none. */
export function utc(iso, fallback = "—") {
  if (!iso) return fallback;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : `${date.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

/** A UTC day as `Dec 7`, from epoch seconds. */
export function dayLabel(seconds) {
  return DAY.format(new Date(seconds * 1000));
}
