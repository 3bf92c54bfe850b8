// taskloom run viewer: read-only, talks to the API of the app that serves it.
// No framework, no build step, no CDN: every text goes in through textContent.
"use strict";

(function () {
  const root = location.pathname.replace(/\/ui(\/.*)?$/, "");
  const api = (path) => root + path;
  const $ = (sel) => document.querySelector(sel);
  let token = "";
  let cursor = null;
  let openRun = null;
  let stream = null;
  let detailTimer = null;
  let detailSeq = 0;

  function say(text, isError) {
    const line = $("#status-line");
    line.textContent = text;
    line.className = isError ? "error" : "";
  }

  function takeToken() {
    const hash = new URLSearchParams(location.hash.slice(1));
    const fromHash = hash.get("token");
    if (fromHash) {
      sessionStorage.setItem("taskloom-token", fromHash);
      hash.delete("token");
      const rest = hash.toString();
      history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    }
    token = sessionStorage.getItem("taskloom-token") || "";
    $("#token").value = token ? "••••••••" : "";
  }

  async function get(path) {
    const response = await fetch(api(path), {
      headers: { authorization: "Bearer " + token, accept: "application/json" },
      cache: "no-store",
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error(body.detail || response.status + " " + response.statusText);
    }
    return body;
  }

  function when(ts) {
    if (!ts) return "";
    const date = new Date(ts * 1000);
    const today = date.toDateString() === new Date().toDateString();
    return today ? date.toLocaleTimeString() : date.toLocaleString();
  }

  function seconds(value) {
    return value === null || value === undefined ? "" : value.toFixed(value < 10 ? 3 : 1) + " s";
  }

  function badge(status) {
    const span = document.createElement("span");
    span.className = "badge s-" + status;
    span.textContent = status;
    return span;
  }

  function cell(row, content) {
    const td = document.createElement("td");
    if (content instanceof Node) td.appendChild(content);
    else td.textContent = content === null || content === undefined ? "" : String(content);
    row.appendChild(td);
    return td;
  }

  function preview(value) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return text === undefined ? "" : text.length > 160 ? text.slice(0, 157) + "…" : text;
  }

  async function loadRuns(append) {
    if (!token) {
      say("paste a read token to see runs");
      return;
    }
    const params = new URLSearchParams({ limit: "50" });
    const status = $("#status-filter").value;
    if (status) params.set("status", status);
    if (append && cursor) params.set("cursor", cursor);
    try {
      const page = await get("/api/tasks?" + params);
      const body = $("#runs tbody");
      if (!append) body.replaceChildren();
      for (const task of page.tasks) {
        const row = document.createElement("tr");
        row.dataset.runId = task.run_id;
        if (task.run_id === openRun) row.className = "selected";
        const code = document.createElement("code");
        code.textContent = task.run_id.slice(0, 12);
        cell(row, code);
        cell(row, task.pipeline);
        cell(row, badge(task.status));
        cell(row, when(task.created_at));
        cell(row, seconds(task.duration_s));
        cell(row, task.total_tokens);
        row.addEventListener("click", () => openTask(task.run_id));
        body.appendChild(row);
      }
      cursor = page.next_cursor;
      $("#more").hidden = !cursor;
      say(body.children.length + " run(s)");
    } catch (error) {
      say(String(error.message || error), true);
    }
  }

  function fact(list, name, value) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    if (value instanceof Node) dd.appendChild(value);
    else dd.textContent = value === null || value === undefined ? "" : String(value);
    list.append(dt, dd);
  }

  async function loadDetail(runId) {
    // Loads may overlap (an event's refresh while the previous one is still in flight):
    // only the latest one may draw, or an older answer would overwrite a newer one.
    const seq = ++detailSeq;
    const task = await get("/api/tasks/" + encodeURIComponent(runId));
    if (runId !== openRun || seq !== detailSeq) return;
    $("#run-id").textContent = task.run_id;
    const status = $("#run-status");
    status.className = "badge s-" + task.status;
    status.textContent = task.status;
    const row = document.querySelector('#runs tbody tr[data-run-id="' + CSS.escape(runId) + '"]');
    if (row && row.children[2]) row.children[2].replaceChildren(badge(task.status));
    const facts = $("#run-facts");
    facts.replaceChildren();
    fact(facts, "pipeline", task.pipeline);
    fact(facts, "created", when(task.created_at));
    fact(facts, "started", when(task.started_at));
    fact(facts, "finished", when(task.finished_at));
    fact(facts, "duration", seconds(task.duration_s));
    fact(facts, "tokens", task.usage.prompt_tokens + " in, " + task.usage.completion_tokens + " out");
    fact(facts, "steps done", task.steps_done);
    if (task.error) {
      const text = document.createElement("span");
      text.className = "error";
      text.textContent = task.error.type + ": " + task.error.message;
      fact(facts, "error", text);
    }
    const body = $("#steps tbody");
    body.replaceChildren();
    for (const step of task.steps) {
      const row = document.createElement("tr");
      row.dataset.stepId = step.step_id;
      cell(row, step.step_id);
      cell(row, step.item === null ? "" : step.item);
      cell(row, badge(step.status));
      cell(row, seconds(step.duration_s));
      cell(row, step.usage.prompt_tokens + step.usage.completion_tokens);
      cell(row, step.attempts);
      cell(row, preview(step.error ? step.error.message : step.output)).className = "mono";
      body.appendChild(row);
    }
    $("#run-output").textContent =
      task.output === null ? "" : JSON.stringify(task.output, null, 2);
  }

  // Refreshes asked for within 150 ms share one load, of the run open when it fires.
  // (Bound to the run that asked first, a refresh pending for the run shown before
  // swallowed every refresh of the run opened next -- its finished steps, its outcome,
  // its stream's end -- and then loaded a run no longer shown, which is not drawn.)
  function refreshDetailSoon() {
    if (detailTimer) return;
    detailTimer = setTimeout(() => {
      detailTimer = null;
      if (!openRun) return;
      loadDetail(openRun).catch((error) => say(String(error.message || error), true));
    }, 150);
  }

  function showEvent(runId, id, kind, data) {
    if (runId !== openRun) return;
    const item = document.createElement("li");
    if (id) item.value = Number(id);
    item.dataset.type = kind;
    if (kind === "step.chunk") item.className = "chunk";
    let text = kind;
    try {
      const event = JSON.parse(data);
      if (event.step_id) text += " " + event.step_id + (event.item !== null && event.item !== undefined ? "[" + event.item + "]" : "");
      if (event.delta) text += " " + JSON.stringify(event.delta);
      if (event.error) text += " — " + event.error.type + ": " + event.error.message;
      text = new Date(event.at * 1000).toLocaleTimeString() + "  " + text;
    } catch (_error) {
      text += " " + data;
    }
    item.textContent = text;
    const list = $("#events");
    list.appendChild(item);
    list.scrollTop = list.scrollHeight;
    if (kind !== "step.chunk") refreshDetailSoon();
  }

  // Server-Sent Events over fetch (EventSource cannot send the Authorization header).
  async function follow(runId) {
    const controller = new AbortController();
    stream = controller;
    let lastId = "";
    const live = $("#live");
    while (!controller.signal.aborted && runId === openRun) {
      try {
        live.textContent = "live";
        const headers = { authorization: "Bearer " + token, accept: "text/event-stream" };
        if (lastId) headers["last-event-id"] = lastId;
        const response = await fetch(api("/api/tasks/" + encodeURIComponent(runId) + "/events"), {
          headers,
          signal: controller.signal,
          cache: "no-store",
        });
        if (!response.ok) throw new Error("events: " + response.status);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let id = "";
            let kind = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith(":")) continue;
              const colon = line.indexOf(":");
              const field = colon < 0 ? line : line.slice(0, colon);
              const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
              if (field === "id") id = text;
              else if (field === "event") kind = text;
              else if (field === "data") data.push(text);
            }
            if (!data.length) continue;
            if (id) lastId = id;
            showEvent(runId, id, kind, data.join("\n"));
          }
        }
        live.textContent = "ended";
        refreshDetailSoon();
        return; // the run ended: the server closed the stream
      } catch (error) {
        if (controller.signal.aborted) return;
        live.textContent = "reconnecting";
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
  }

  async function openTask(runId) {
    if (stream) stream.abort();
    openRun = runId;
    for (const row of document.querySelectorAll("#runs tbody tr")) {
      row.classList.toggle("selected", row.dataset.runId === runId);
    }
    $("#run-pane").hidden = false;
    $("#events").replaceChildren();
    $("#live").textContent = "";
    try {
      await loadDetail(runId);
      follow(runId);
    } catch (error) {
      say(String(error.message || error), true);
    }
  }

  function start() {
    takeToken();
    $("#token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("#token").value.trim();
      if (value && !value.startsWith("•")) {
        token = value;
        sessionStorage.setItem("taskloom-token", token);
        $("#token").value = "••••••••";
      }
      loadRuns(false);
    });
    $("#status-filter").addEventListener("change", () => loadRuns(false));
    $("#more").addEventListener("click", () => loadRuns(true));
    loadRuns(false);
    setInterval(() => {
      if (!document.hidden && !cursor) loadRuns(false);
    }, 3000);
  }

  start();
})();
