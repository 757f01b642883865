// How the pages write the marketplace's values: money (integer micro-units in JSON, decimals
// for people, exactly as the Go Money.String writes them), IDs, sizes, times and periods.

const MICRO = 1_000_000;

// money writes micro-units as a decimal with at least two and at most six fractional digits:
// 12500000 → "12.50", 1 → "0.000001", -3000000 → "-3.00". It takes a number or a BigInt.
export function money(m) {
  if (m === undefined || m === null || m === '') return '';
  let v = BigInt(m);
  const neg = v < 0n;
  if (neg) v = -v;
  const whole = v / BigInt(MICRO);
  let frac = String(v % BigInt(MICRO)).padStart(6, '0').replace(/0+$/, '');
  while (frac.length < 2) frac += '0';
  return `${neg ? '-' : ''}${whole}.${frac}`;
}

// parseMoney reads a typed decimal ("3", "0.25", "-1.000001") as micro-units, exactly (string
// arithmetic, no floats). It answers null for text that is not such a decimal (more than six
// decimals included): the form then sends the text as typed, and the node says what is wrong.
export function parseMoney(text) {
  const m = /^([+-]?)(\d*)(?:\.(\d*))?$/.exec(String(text).trim());
  if (!m || (m[2] === '' && !m[3]) || (m[3] || '').length > 6) return null;
  const v = BigInt(m[2] || '0') * BigInt(MICRO) + BigInt((m[3] || '').padEnd(6, '0') || '0');
  const out = m[1] === '-' ? -v : v;
  // Beyond 2^53 a JSON number loses digits: send such an amount as its decimal text.
  return out <= BigInt(Number.MAX_SAFE_INTEGER) && out >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(out) : null;
}

// short is the tail of an ID, enough to tell IDs apart on a page; the full ID goes in a title.
export function short(id) {
  return id ? String(id).slice(-8) : '';
}

// mb writes a size given in MB.
export function mb(n) {
  if (n === undefined || n === null) return '';
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} GB`;
  return `${n} MB`;
}

// period writes a number of seconds as the period people say: "10 s", "1 min", "1 h", "1 day".
export function period(secs) {
  const units = [[86400, 'day'], [3600, 'h'], [60, 'min']];
  for (const [n, name] of units) {
    if (secs >= n && secs % n === 0) {
      const k = secs / n;
      return name === 'day' ? `${k} day${k === 1 ? '' : 's'}` : `${k} ${name}`;
    }
  }
  return `${secs} s`;
}

// when writes a time from JSON in the browser's locale; the zero time is "never".
export function when(t) {
  if (!t || t.startsWith('0001-')) return 'never';
  return new Date(t).toLocaleString();
}

// resources writes a configuration's or a machine's resources in one line.
export function resources(r) {
  const storage = r.storage_mb ?? r.disk_mb;
  return `${r.speed_bogomips} bogomips · ${mb(r.memory_mb)} memory · ${mb(storage)} disk`;
}
