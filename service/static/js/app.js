// The page: #/ lists jobs and submits new ones; #/jobs/{id} shows one job (status, viewer,
// metrics, downloads). State the tests look for is written to data- attributes of <body>.

import { apiKey, getJson, request } from "./api.js";
import { buildForm } from "./form.js";
import { isActive, listJobs, progressText, remember, renderJobs } from "./jobs.js";
import { renderMetrics } from "./metrics.js";
import { Viewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
let timer = null;

function schedule(fn) {
  clearTimeout(timer);
  timer = setTimeout(fn, POLL_MS);
}

function setupKey() {
  $("api-key").value = apiKey.get();
  $("key-state").textContent = apiKey.get() ? "key saved" : "";
  $("key-form").onsubmit = (event) => {
    event.preventDefault();
    apiKey.set($("api-key").value.trim());
    $("key-state").textContent = apiKey.get() ? "key saved" : "no key";
    route();
  };
}

async function showHome() {
  $("home").hidden = false;
  $("job").hidden = true;
  const tabs = document.querySelectorAll(".tabs button");
  const build = (kind) =>
    buildForm($("submit-form"), kind, (job) => {
      remember(job.job_id);
      refreshJobs();
    }, $("submit-state")).catch((error) => ($("submit-state").textContent = error.message));
  for (const tab of tabs)
    tab.onclick = () => {
      tabs.forEach((t) => t.classList.toggle("active", t === tab));
      build(tab.dataset.kind);
    };
  await build(document.querySelector(".tabs button.active").dataset.kind);
  await refreshJobs();
}

async function refreshJobs() {
  if ($("home").hidden) return;
  try {
    const { jobs, note } = await listJobs();
    $("jobs-note").textContent = note;
    renderJobs($("jobs").querySelector("tbody"), jobs, (id) => (location.hash = `#/jobs/${id}`));
  } catch (error) {
    $("jobs-note").textContent = error.message;
  }
  schedule(refreshJobs);
}

// Fetched with the key (a plain link could not send it), saved under the server's file name.
async function download(url, fallback) {
  const response = await request(url);
  const disposition = response.headers.get("content-disposition") || "";
  const name = disposition.match(/filename="?([^";]+)"?/)?.[1] || fallback;
  const blob = await response.blob();
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(blob),
    download: name,
  });
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function renderDownloads(job) {
  const items = Object.entries(job.artifacts).map(([name, url]) => {
    const item = document.createElement("li");
    const button = Object.assign(document.createElement("button"), { textContent: name });
    button.onclick = () => download(url, name.replace("/", "_"));
    item.append(button);
    return item;
  });
  $("downloads").replaceChildren(...items);
}

async function showViewer(job) {
  if (job.kind !== "pair") {
    $("viewer-state").textContent = "The viewer shows pair jobs; for a series see the preview.";
    document.body.dataset.viewer = "none";
    return;
  }
  const viewer = new Viewer($("viewer"), $("viewer-state"));
  const { hasBefore, hasLabels, grids } = await viewer.load(job);
  for (const value of ["checker-before", "diff-before"])
    $("overlay").querySelector(`option[value="${value}"]`).disabled = !hasBefore;
  for (const option of $("overlay").querySelectorAll('option[value^="grid-"]'))
    option.disabled = !grids.includes(option.value); // a 2-D image has only its own plane
  $("contours-control").hidden = !hasLabels;
  const redraw = () =>
    viewer.show({
      base: $("base").value,
      overlay: $("overlay").value,
      opacity: Number($("opacity").value),
      contours: $("contours").checked,
    });
  // select and checkbox changes arrive as "change" (and not always as "input")
  for (const id of ["base", "overlay", "opacity", "contours"]) $(id).oninput = $(id).onchange = redraw;
  for (const axis of [0, 1, 2])
    $(`slice-${axis}`).oninput = (event) => viewer.setSlice(axis, Number(event.target.value));
  $("slice-controls").hidden = viewer.is2d; // one plane: nothing to scroll
  redraw();
  window.riirViewer = viewer; // for the browser tests and the console
  document.body.dataset.viewer = "ready";
}

async function showJob(id) {
  $("home").hidden = true;
  $("job").hidden = false;
  $("job-id").textContent = id;
  document.body.dataset.viewer = "";
  let shown = false;
  const poll = async () => {
    let job;
    try {
      job = await getJson(`jobs/${id}`);
    } catch (error) {
      $("job-error").textContent = error.message;
      return;
    }
    $("job-status").textContent = job.status;
    $("job-status").className = `status ${job.status}`;
    document.body.dataset.jobStatus = job.status;
    $("job-progress").max = job.progress.total || 1;
    $("job-progress").value = job.progress.done;
    $("job-progress").title = progressText(job);
    $("job-error").textContent = job.error || "";
    if (isActive(job)) return schedule(poll);
    if (job.status === "succeeded" && !shown) {
      shown = true;
      renderMetrics($("metrics").querySelector("tbody"), job.metrics || {});
      renderDownloads(job);
      const preview = await (await request(job.artifacts.preview)).blob();
      $("preview").src = URL.createObjectURL(preview);
      await showViewer(job).catch((error) => {
        $("viewer-state").textContent = `viewer: ${error.message}`;
        document.body.dataset.viewer = "error";
      });
    }
  };
  await poll();
}

function route() {
  clearTimeout(timer);
  const match = location.hash.match(/^#\/jobs\/([A-Za-z0-9_-]+)$/);
  return match ? showJob(match[1]) : showHome();
}

setupKey();
window.addEventListener("hashchange", route);
route();
