// The submission form, built from the server's own OpenAPI schema: the fields (and their
// choices and help) are exactly what POST /register and /register-series accept.

import { getJson, request } from "./api.js";

const ROUTES = { pair: "register", series: "register-series" };

function choices(schema) {
  // pydantic writes an optional enum as anyOf [{enum}, {type: null}]
  const options = [schema, ...(schema.anyOf || [])];
  for (const option of options) if (option.enum) return option.enum;
  if (options.some((option) => option.type === "boolean")) return ["true", "false"];
  return null;
}

function field(name, schema, required, models) {
  const label = document.createElement("label");
  const title = document.createElement("span");
  title.textContent = name + (required ? " *" : "");
  label.append(title);
  let input;
  const values = name === "model" ? models : choices(schema);
  if (schema.format === "binary") {
    input = Object.assign(document.createElement("input"), { type: "file", accept: ".nii,.gz" });
  } else if (values) {
    input = document.createElement("select");
    const blank = schema.default == null || name === "model";
    const list = blank ? ["", ...values] : values;
    for (const value of list) {
      const option = Object.assign(document.createElement("option"), {
        value,
        textContent: value === "" ? "(default)" : value,
      });
      if (value === String(schema.default ?? "")) option.selected = true;
      input.append(option);
    }
  } else {
    const numeric = [schema, ...(schema.anyOf || [])].some((s) => s.type === "integer");
    input = Object.assign(document.createElement("input"), {
      type: numeric ? "number" : "text",
      placeholder: schema.default == null ? "(default)" : String(schema.default),
    });
  }
  input.name = name;
  input.required = required;
  label.append(input);
  if (schema.description) {
    const help = document.createElement("small");
    help.textContent = schema.description;
    label.append(help);
  }
  return label;
}

export async function buildForm(form, kind, onSubmitted, state) {
  const [openapi, models] = await Promise.all([getJson("openapi.json"), getJson("models")]);
  const route = ROUTES[kind];
  const schema = openapi.paths[`/${route}`].post.requestBody.content["multipart/form-data"].schema;
  form.replaceChildren(
    ...Object.entries(schema.properties).map(([name, s]) =>
      field(name, s, (schema.required || []).includes(name), models.map((m) => m.name)),
    ),
    Object.assign(document.createElement("button"), { type: "submit", textContent: "Register" }),
  );
  form.onsubmit = async (event) => {
    event.preventDefault();
    const body = new FormData();
    for (const input of form.elements) {
      if (!input.name) continue;
      if (input.type === "file") {
        if (input.files.length) body.append(input.name, input.files[0]);
      } else if (input.value !== "") {
        body.append(input.name, input.value);
      }
    }
    state.textContent = "uploading…";
    try {
      const job = await (await request(route, { method: "POST", body })).json();
      state.textContent = `queued job ${job.job_id}`;
      onSubmitted(job);
    } catch (error) {
      state.textContent = error.message;
    }
  };
}
