// mig-orchestrator dashboard: polls /instances once a second and renders totals plus one card per instance.
// Plain JavaScript and <canvas>, no framework: the page must work on machines with no internet access.
// Every shown number also sits in a data-value attribute (raw, unformatted) so tests and scripts can read it.
// The charts draw the last minute the metrics hub keeps (the view's "history"), not what this page saw: a page
// opened now shows the past minute at once, and a tab the browser throttled in the background has no holes.
// Only an answer without history (an instance answering alone, with no hub) falls back to the page's own samples.
"use strict";

(() => {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 5000;
  const HISTORY = 60; // samples kept per chart: about a minute at one poll a second

  // Why a value can be missing; shown as the tooltip of "n/a" so nobody mistakes it for zero.
  const WHY = {
    load: "not reported yet: the instance has not measured its busy fraction",
    queue: "not reported yet: the instance's batcher has not published its queue",
    rate: "no rate yet: it needs two reports from the instance, about a second apart",
    mean: "no request completed in the window, so there is no mean",
    quantile: "no request completed in the window, so there is no percentile",
    memory: "not reported: this instance publishes no memory reading",
    memoryMig: "not reported: NVML gave no memory reading for this MIG slice",
    gpu: "not measured: NVML reports no utilisation for MIG slices (A100/A30) or CPU pools",
    gpuLabel: "not set: a whole GPU has no GPU instance, so dcgm-exporter leaves this label empty",
  };

  const instancesUrl = new URL("/instances", window.location.origin);
  const histories = new Map(); // instance name -> [{throughput, load}]
  const totalHistory = []; // the fallback's samples when the view carries no history
  let updates = 0;

  // ---- formatting -------------------------------------------------------------------------------------------
  const isNumber = (value) => typeof value === "number" && Number.isFinite(value);

  function fixed(value, digits) {
    return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  const fmt = {
    count: (v) => fixed(v, 0),
    rate: (v) => fixed(v, v >= 100 ? 0 : 1),
    ms: (v) => fixed(v, v >= 100 ? 0 : 1),
    percent: (v) => `${fixed(v * 100, v === 0 || v >= 0.1 ? 0 : 1)}%`,
    bytes: (v) => {
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let size = v;
      let unit = 0;
      while (size >= 1024 && unit < units.length - 1) {
        size /= 1024;
        unit += 1;
      }
      return `${fixed(size, unit === 0 ? 0 : 1)} ${units[unit]}`;
    },
  };

  // Show a number, or "n/a" with the reason as tooltip; data-value keeps the raw number ("" when missing).
  function setValue(element, value, format, why) {
    if (!element) return;
    if (isNumber(value)) {
      element.textContent = format(value);
      element.dataset.value = String(value);
      element.classList.remove("na");
      element.removeAttribute("title");
    } else {
      element.textContent = "n/a";
      element.dataset.value = "";
      element.classList.add("na");
      element.title = why;
    }
  }

  function setText(element, text, why) {
    if (!element) return;
    if (text === undefined || text === null || text === "") {
      element.textContent = "n/a";
      element.classList.add("na");
      element.title = why;
    } else {
      element.textContent = String(text);
      element.classList.remove("na");
      element.removeAttribute("title");
    }
  }

  const field = (root, name) => root.querySelector(`[data-field="${name}"]`);

  // ---- charts -----------------------------------------------------------------------------------------------
  function remember(history, sample) {
    history.push(sample);
    if (history.length > HISTORY) history.splice(0, history.length - HISTORY);
  }

  // One line per series; `scale` maps a value to 0..1 of the height. Missing values (an instance down, or not yet
  // started) break the line, and each unbroken run is filled on its own so that a gap stays empty.
  function drawLine(ctx, samples, key, scale, width, height, color, fill) {
    const step = width / (HISTORY - 1);
    const offset = HISTORY - samples.length; // newest sample at the right edge
    const runs = [];
    let run = null;
    samples.forEach((sample, i) => {
      const value = sample[key];
      if (!isNumber(value)) {
        run = null;
        return;
      }
      if (!run) {
        run = [];
        runs.push(run);
      }
      run.push([(offset + i) * step, height - 2 - Math.min(1, Math.max(0, scale(value))) * (height - 4)]);
    });
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    for (const points of runs) {
      ctx.beginPath();
      points.forEach(([x, y], n) => (n === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y)));
      ctx.stroke();
      if (fill && points.length > 1) {
        ctx.lineTo(points[points.length - 1][0], height);
        ctx.lineTo(points[0][0], height);
        ctx.closePath();
        ctx.globalAlpha = 0.15;
        ctx.fillStyle = color;
        ctx.fill();
        ctx.globalAlpha = 1;
      }
    }
  }

  function drawChart(canvas, samples, withLoad) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth || canvas.width));
    const height = Math.max(1, Math.round(canvas.clientHeight || canvas.height));
    if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
      canvas.width = width * ratio;
      canvas.height = height * ratio;
    }
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const styles = getComputedStyle(document.documentElement);
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.strokeStyle = styles.getPropertyValue("--line").trim() || "#ddd";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, height - 0.5);
    ctx.lineTo(width, height - 0.5);
    ctx.stroke();
    const peak = Math.max(1, ...samples.map((s) => (isNumber(s.throughput) ? s.throughput : 0)));
    if (withLoad) {
      drawLine(ctx, samples, "load", (v) => v, width, height, styles.getPropertyValue("--load").trim(), true);
    }
    drawLine(ctx, samples, "throughput", (v) => v / peak, width, height, styles.getPropertyValue("--throughput").trim());
    ctx.fillStyle = styles.getPropertyValue("--muted").trim() || "#666";
    ctx.font = "10px system-ui, sans-serif";
    const measured = samples.some((s) => isNumber(s.throughput));
    ctx.fillText(measured ? `peak ${fmt.rate(peak)} emb/s` : "no throughput measured yet", 4, 11);
    canvas.dataset.samples = String(samples.length);
  }

  // ---- cards ------------------------------------------------------------------------------------------------
  function makeCard(name) {
    const template = document.getElementById("card-template");
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.instance = name;
    field(card, "name").textContent = name;
    return card;
  }

  function instanceGpuUtilization(view, name) {
    // Only a per-instance map can be attributed to a card; a single number belongs to the totals.
    const value = view.gpu_utilization && view.gpu_utilization.value;
    return value && typeof value === "object" ? value[name] : null;
  }

  function renderCard(card, name, stats, view) {
    const labels = stats.labels || {};
    const kind = labels.device_kind || "unknown";
    const isGpu = kind !== "cpu";
    card.dataset.deviceKind = kind;
    card.dataset.model = labels.model || "";
    field(card, "model").textContent = labels.model || "";
    field(card, "device-kind").textContent = kind;
    const reporting = field(card, "reporting");
    reporting.textContent = stats.reporting ? "reporting" : "stale";
    reporting.dataset.state = stats.reporting ? "ok" : "stale";
    reporting.title = stats.reporting ? "reported within the last 10 s" : "no report for over 10 s";
    card.classList.toggle("stale", !stats.reporting);

    const gpuLabels = field(card, "gpu-labels");
    gpuLabels.hidden = !isGpu;
    if (isGpu) {
      setText(field(card, "gpu"), labels.gpu, "not reported by the instance");
      setText(field(card, "GPU_I_PROFILE"), labels.GPU_I_PROFILE, WHY.gpuLabel);
      setText(field(card, "GPU_I_ID"), labels.GPU_I_ID, WHY.gpuLabel);
      const whyGpu = (view.gpu_utilization && view.gpu_utilization.why) || WHY.gpu;
      setValue(field(card, "gpu-utilization"), instanceGpuUtilization(view, name), (v) => fmt.percent(v / 100), whyGpu);
    }

    const load = stats.load;
    setValue(field(card, "load"), load, fmt.percent, WHY.load);
    const bar = field(card, "load-bar");
    const clamped = isNumber(load) ? Math.min(1, Math.max(0, load)) : 0;
    bar.style.width = `${(clamped * 100).toFixed(1)}%`;
    bar.dataset.level = !isNumber(load) ? "none" : load >= 0.8 ? "high" : "normal";
    bar.parentElement.setAttribute("aria-valuenow", String(Math.round(clamped * 100)));

    setValue(field(card, "throughput"), stats.throughput_embeddings_per_s, fmt.rate, WHY.rate);
    setValue(field(card, "tokens-per-s"), stats.tokens_per_s, fmt.rate, WHY.rate);
    setValue(field(card, "queue-length"), stats.queue_length, fmt.count, WHY.queue);
    setValue(field(card, "in-flight"), stats.in_flight, fmt.count, WHY.queue);
    setValue(field(card, "response-p50-ms"), stats.response_p50_ms, fmt.ms, WHY.quantile);
    setValue(field(card, "response-p99-ms"), stats.response_p99_ms, fmt.ms, WHY.quantile);
    setValue(field(card, "response-ms"), stats.response_time_ms, fmt.ms, WHY.mean);
    setValue(field(card, "queue-ms"), stats.queue_time_ms, fmt.ms, WHY.mean);
    setValue(field(card, "inference-ms"), stats.inference_time_ms, fmt.ms, WHY.mean);
    const windowNote = field(card, "latency-window");
    const windowS = stats.latency_window_s;
    windowNote.textContent = isNumber(windowS) ? `latencies: last ${fmt.count(windowS)} s` : "latencies: since start";
    windowNote.dataset.value = isNumber(windowS) ? String(windowS) : "";
    // Totals include the replicas this instance had before (the hub carries their counters): they never go down.
    setValue(field(card, "requests"), stats.requests, fmt.count, "not reported");
    const replaced = field(card, "replacements");
    const replacements = isNumber(stats.replacements) ? stats.replacements : 0;
    replaced.hidden = replacements === 0;
    replaced.textContent = `replaced ${fmt.count(replacements)}×`;
    replaced.dataset.value = String(replacements);
    replaced.title = "its replica was replaced; the totals include the earlier replicas' counts";

    const byType = stats.failures || {};
    setValue(field(card, "server-failures"), stats.server_failures, fmt.count, "not reported");
    setValue(field(card, "client-errors"), stats.client_errors, fmt.count, "not reported");
    setValue(field(card, "error-rate"), stats.error_rate, fmt.percent, "no requests yet");
    const breakdown = field(card, "failures-by-type");
    breakdown.textContent = Object.entries(byType)
      .filter(([, n]) => n > 0)
      .sort((a, b) => b[1] - a[1])
      .map(([type, n]) => `${type}: ${fmt.count(n)}`)
      .join(" · ");

    const memory = field(card, "memory");
    setValue(memory, stats.memory_used_bytes, fmt.bytes, kind === "mig" ? WHY.memoryMig : WHY.memory);
    if (isNumber(stats.memory_used_bytes) && isNumber(stats.memory_total_bytes) && stats.memory_total_bytes > 0) {
      memory.textContent = `${fmt.bytes(stats.memory_used_bytes)} / ${fmt.bytes(stats.memory_total_bytes)}`;
    }

    const served = stats.history || {};
    let history;
    if (Array.isArray(served.throughput) && served.throughput.length) {
      const loads = served.load || [];
      history = served.throughput.map((throughput, i) => ({ throughput, load: loads[i] }));
    } else {
      history = histories.get(name);
      if (!history) {
        history = [];
        histories.set(name, history);
      }
      remember(history, { throughput: stats.throughput_embeddings_per_s, load: stats.load });
    }
    drawChart(field(card, "history"), history.slice(-HISTORY), true);
  }

  function renderCards(view) {
    const container = document.getElementById("instances");
    const stats = view.instance_stats || {};
    // Grouped by the model each instance serves (several models behind one endpoint), then by name.
    const modelOf = (name) => ((stats[name] && stats[name].labels) || {}).model || "";
    const names = Object.keys(stats).sort((a, b) => modelOf(a).localeCompare(modelOf(b)) || a.localeCompare(b));
    const present = new Set(names);
    for (const card of Array.from(container.children)) {
      if (!present.has(card.dataset.instance)) {
        histories.delete(card.dataset.instance);
        card.remove();
      }
    }
    names.forEach((name, index) => {
      let card = container.querySelector(`[data-instance="${CSS.escape(name)}"]`);
      if (!card) card = makeCard(name);
      if (container.children[index] !== card) container.insertBefore(card, container.children[index] || null);
      renderCard(card, name, stats[name], view);
    });
    document.getElementById("empty").hidden = names.length > 0;
    return names.map((name) => stats[name]);
  }

  function renderModels(view) {
    // One line per served model with its totals, shown only when more than one model is served.
    const section = document.getElementById("models");
    const models = view.models || {};
    const names = Object.keys(models).sort();
    section.hidden = names.length < 2;
    section.replaceChildren(
      ...names.map((name) => {
        const entry = models[name];
        const line = document.createElement("div");
        line.className = "model-line";
        line.dataset.model = name;
        const failed = entry.server_failures + entry.client_errors + entry.overloaded;
        line.textContent =
          `${name}: ${entry.reporting}/${entry.instances.length} instances reporting, ` +
          `${fmt.rate(entry.throughput_embeddings_per_s)} embeddings/s, ${fmt.count(entry.requests)} requests, ` +
          `${fmt.count(failed)} failed`;
        return line;
      }),
    );
  }

  // ---- totals -----------------------------------------------------------------------------------------------
  function renderTotals(view, all) {
    const totals = document.getElementById("totals");
    const errors = view.error_rates || {};
    setValue(field(totals, "throughput"), view.throughput_embeddings_per_s, fmt.rate, WHY.rate);
    setValue(field(totals, "requests"), errors.requests, fmt.count, "not reported");
    setValue(field(totals, "server-failures"), errors.server_failures, fmt.count, "not reported");
    setValue(field(totals, "error-rate"), errors.server_failure_rate, fmt.percent, "no requests yet");
    setValue(field(totals, "client-errors"), errors.client_errors, fmt.count, "not reported");
    setValue(field(totals, "overloaded"), errors.overloaded, fmt.count, "not reported");
    renderFrontDoor(totals, view.front_door);
    setValue(field(totals, "memory"), view.memory_usage_bytes, fmt.bytes, WHY.memory);

    // A GPU card on a machine that serves on CPUs only would say "n/a" forever: it is left out.
    const onCpuOnly = all.length > 0 && all.every((s) => (s.labels || {}).device_kind === "cpu");
    totals.querySelector('[data-total="gpu-utilization"]').hidden = onCpuOnly;
    const gpu = view.gpu_utilization || {};
    const gpuValue = isNumber(gpu.value) ? gpu.value : null; // a per-instance map is shown on the cards
    setValue(field(totals, "gpu-utilization"), gpuValue, (v) => fmt.percent(v / 100), gpu.why || WHY.gpu);

    renderInstanceCount(totals, view, all);
    const served = view.history && view.history.throughput;
    let history;
    if (Array.isArray(served) && served.length) {
      history = served.map((throughput) => ({ throughput, load: null }));
    } else {
      remember(totalHistory, { throughput: view.throughput_embeddings_per_s, load: null });
      history = totalHistory;
    }
    drawChart(field(totals, "history"), history.slice(-HISTORY), false);
    const model = all.length && all[0].labels ? all[0].labels.model : "";
    document.getElementById("model").textContent = model || "";
  }

  // Through the front door, it knows at once which instances it can reach (a killed replica's lane breaks), while
  // the dead replica's last report stays "reporting" for 10 s: its count is the one shown.
  function renderInstanceCount(totals, view, all) {
    const instances = field(totals, "instances");
    const unit = field(totals, "instances-unit");
    if (isNumber(view.instances_ready) && isNumber(view.instances_planned)) {
      instances.textContent = `${view.instances_ready} / ${view.instances_planned}`;
      instances.dataset.value = String(view.instances_ready);
      instances.dataset.planned = String(view.instances_planned);
      instances.dataset.state = view.instances_ready < view.instances_planned ? "degraded" : "ok";
      unit.textContent = "ready / planned";
    } else {
      const reporting = all.filter((s) => s.reporting).length;
      instances.textContent = `${reporting} / ${all.length}`;
      instances.dataset.value = String(reporting);
      instances.dataset.planned = String(all.length);
      instances.dataset.state = reporting < all.length ? "degraded" : "ok";
      unit.textContent = "reporting / known";
    }
  }

  // The front door's counters (every path it served); absent when /instances was not asked through it.
  function renderFrontDoor(totals, front) {
    const retries = field(totals, "retries");
    const detail = field(totals, "front-door-detail");
    const known = front && typeof front === "object";
    const why = "not known: this answer did not come through the front door";
    setValue(retries, known ? front.retries : null, fmt.count, why);
    if (!known) {
      detail.textContent = "resent by the front door";
      return;
    }
    const losses = front.instance_losses || 0;
    const own = (front.unavailable || 0) + (front.timeouts || 0) + (front.internal_errors || 0);
    const processes = Array.isArray(front.workers) && front.workers.length > 1
      ? ` · ${front.workers.length} front-door processes` : "";
    detail.textContent = `${fmt.count(losses)} instance losses · ${fmt.count(own)} failed at the front door${processes}`;
    detail.title = "instance losses: requests whose instance died before answering (each resent once); " +
      "failed at the front door: its own 503 (no instance, or lost twice), 504 and 500 answers, on every path";
    detail.dataset.losses = String(losses);
  }

  function setStatus(state, text) {
    const status = document.getElementById("status");
    status.dataset.state = state;
    status.textContent = text;
  }

  // ---- polling ----------------------------------------------------------------------------------------------
  async function poll() {
    const started = performance.now();
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(instancesUrl, {
        cache: "no-store",
        headers: { accept: "application/json" },
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const view = await response.json();
      const all = renderCards(view);
      renderTotals(view, all);
      renderModels(view);
      updates += 1;
      document.body.dataset.updates = String(updates);
      setStatus("ok", `updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      const reason = error && error.name === "AbortError" ? "timed out" : String((error && error.message) || error);
      setStatus("error", `cannot reach /instances (${reason}); retrying`);
    } finally {
      clearTimeout(timer);
      // One request at a time: a slow answer delays the next poll instead of piling requests up.
      setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", poll);
  } else {
    poll();
  }
})();
