// metrics.json as a two-column table: nested keys joined by dots (list items by their
// index: frame_motion.0.p95_voxels), numbers to 4 digits.

const isObject = (v) => v !== null && typeof v === "object";

function flatten(value, prefix, rows) {
  // A list of objects (a series' frames) nests like an object; a list of numbers is a value.
  if (isObject(value) && (!Array.isArray(value) || value.some(isObject))) {
    for (const [key, inner] of Object.entries(value))
      flatten(inner, prefix ? `${prefix}.${key}` : key, rows);
  } else {
    rows.push([prefix, value]);
  }
  return rows;
}

// A shape (fixed_shape) reads as 160 × 192 × 224, any other list (kept_still) as 0, 2, 3.
const format = (key, v) =>
  typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4))
  : Array.isArray(v) ? v.map((x) => format(key, x)).join(key.endsWith("shape") ? " × " : ", ")
  : v === null ? "–" : String(v);

export function metricRows(metrics) {
  return flatten(metrics, "", []).map(([key, value]) => [key, format(key, value)]);
}

export function renderMetrics(tbody, metrics) {
  tbody.replaceChildren(
    ...metricRows(metrics).map((cells) => {
      const row = document.createElement("tr");
      for (const text of cells)
        row.append(Object.assign(document.createElement("td"), { textContent: text }));
      return row;
    }),
  );
}
