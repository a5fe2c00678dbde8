// The job list. A server with an API key lists its recent jobs (GET /jobs); without a key
// it refuses to (a job id is then the only credential to its images), so the page lists the
// jobs this browser submitted, remembered in localStorage.

import { ApiError, getJson } from "./api.js";

const MINE = "riir.myJobs";
const ACTIVE = new Set(["queued", "running"]);

export function remember(jobId) {
  const ids = mine().filter((id) => id !== jobId);
  localStorage.setItem(MINE, JSON.stringify([jobId, ...ids].slice(0, 50)));
}

function mine() {
  try {
    return JSON.parse(localStorage.getItem(MINE) || "[]");
  } catch {
    return [];
  }
}

export async function listJobs() {
  try {
    return { jobs: (await getJson("jobs?limit=50")).jobs, note: "" };
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 403) throw error;
  }
  const jobs = [];
  for (const id of mine()) {
    try {
      jobs.push(await getJson(`jobs/${id}`));
    } catch (error) {
      if (error.status !== 404) throw error; // removed after the retention period
    }
  }
  return { jobs, note: "This server has no API key, so it lists no jobs: these are the jobs this browser submitted." };
}

export const isActive = (job) => ACTIVE.has(job.status);

export const progressText = (job) =>
  job.progress.total ? `${job.progress.done} / ${job.progress.total}` : "–";

export function renderJobs(tbody, jobs, open) {
  tbody.replaceChildren(
    ...jobs.map((job) => {
      const row = document.createElement("tr");
      row.dataset.job = job.job_id;
      const cells = [
        job.job_id.slice(0, 8) + "…",
        job.kind,
        job.status,
        progressText(job),
        new Date(job.timings.created_at).toLocaleString(),
      ];
      for (const [i, text] of cells.entries()) {
        const cell = document.createElement("td");
        if (i === 2) {
          const badge = Object.assign(document.createElement("span"), { textContent: text });
          badge.className = `status ${text}`;
          cell.append(badge);
        } else cell.textContent = text;
        row.append(cell);
      }
      row.onclick = () => open(job.job_id);
      return row;
    }),
  );
}
