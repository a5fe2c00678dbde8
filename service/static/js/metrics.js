// metrics.json as a two-column table: nested keys joined by dots, numbers to 4 digits.

function flatten(value, prefix, rows) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, inner] of Object.entries(value))
      flatten(inner, prefix ? `${prefix}.${key}` : key, rows);
  } else {
    rows.push([prefix, value]);
  }
  return rows;
}

const format = (v) =>
  typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4))
  : Array.isArray(v) ? v.map(format).join(" × ")
  : v === null ? "–" : String(v);

export function renderMetrics(tbody, metrics) {
  tbody.replaceChildren(
    ...flatten(metrics, "", []).map(([key, value]) => {
      const row = document.createElement("tr");
      for (const text of [key, format(value)])
        row.append(Object.assign(document.createElement("td"), { textContent: text }));
      return row;
    }),
  );
}
