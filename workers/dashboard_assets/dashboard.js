// mig-orchestrator dashboard: polls /instances once a second and renders totals plus one card per instance.
// Plain JavaScript and <canvas>, no framework: the page must work on machines with no internet access.
// Every shown number also sits in a data-value attribute (raw, unformatted) so tests and scripts can read it.
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
    mean: "no completed request yet, so there is no mean",
    memory: "not reported: this instance publishes no memory reading",
    memoryMig: "not reported: NVML gave no memory reading for this MIG slice",
    gpu: "not measured: NVML reports no utilisation for MIG slices (A100/A30) or CPU pools",
    gpuLabel: "not set: a whole GPU has no GPU instance, so dcgm-exporter leaves this label empty",
  };

  const instancesUrl = new URL("/instances", window.location.origin);
  const histories = new Map(); // instance name -> [{throughput, load}]
  const totalHistory = [];
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

  // One line per series; `scale` maps a value to 0..1 of the height. Missing values break the line.
  function drawLine(ctx, samples, key, scale, width, height, color, fill) {
    const step = width / (HISTORY - 1);
    const offset = HISTORY - samples.length; // newest sample at the right edge
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    let open = false;
    let firstX = null;
    let lastX = null;
    ctx.beginPath();
    samples.forEach((sample, i) => {
      const value = sample[key];
      if (!isNumber(value)) {
        open = false;
        return;
      }
      const x = (offset + i) * step;
      const y = height - 2 - Math.min(1, Math.max(0, scale(value))) * (height - 4);
      if (open) {
        ctx.lineTo(x, y);
      } else {
        ctx.moveTo(x, y);
        if (firstX === null) firstX = x;
      }
      lastX = x;
      open = true;
    });
    ctx.stroke();
    if (fill && firstX !== null && lastX > firstX) {
      ctx.lineTo(lastX, height);
      ctx.lineTo(firstX, height);
      ctx.closePath();
      ctx.globalAlpha = 0.15;
      ctx.fillStyle = color;
      ctx.fill();
      ctx.globalAlpha = 1;
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
    setValue(field(card, "response-ms"), stats.response_time_ms, fmt.ms, WHY.mean);
    setValue(field(card, "queue-ms"), stats.queue_time_ms, fmt.ms, WHY.mean);
    setValue(field(card, "inference-ms"), stats.inference_time_ms, fmt.ms, WHY.mean);
    setValue(field(card, "requests"), stats.requests, fmt.count, "not reported");

    const byType = stats.failures || {};
    const failureCount = Object.values(byType).reduce((sum, n) => sum + (isNumber(n) ? n : 0), 0);
    setValue(field(card, "failures"), failureCount, fmt.count, "not reported");
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

    let history = histories.get(name);
    if (!history) {
      history = [];
      histories.set(name, history);
    }
    remember(history, { throughput: stats.throughput_embeddings_per_s, load: stats.load });
    drawChart(field(card, "history"), history, true);
  }

  function renderCards(view) {
    const container = document.getElementById("instances");
    const stats = view.instance_stats || {};
    const names = Object.keys(stats).sort();
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

  // ---- totals -----------------------------------------------------------------------------------------------
  function renderTotals(view, all) {
    const totals = document.getElementById("totals");
    const errors = view.error_rates || {};
    setValue(field(totals, "throughput"), view.throughput_embeddings_per_s, fmt.rate, WHY.rate);
    setValue(field(totals, "requests"), errors.requests, fmt.count, "not reported");
    setValue(field(totals, "failures"), errors.failures, fmt.count, "not reported");
    setValue(field(totals, "error-rate"), errors.rate, fmt.percent, "no requests yet");
    setValue(field(totals, "memory"), view.memory_usage_bytes, fmt.bytes, WHY.memory);
    const gpu = view.gpu_utilization || {};
    const gpuValue = isNumber(gpu.value) ? gpu.value : null; // a per-instance map is shown on the cards
    setValue(field(totals, "gpu-utilization"), gpuValue, (v) => fmt.percent(v / 100), gpu.why || WHY.gpu);
    const reporting = all.filter((s) => s.reporting).length;
    const instances = field(totals, "instances");
    instances.textContent = `${reporting} / ${all.length}`;
    instances.dataset.value = String(all.length);
    remember(totalHistory, { throughput: view.throughput_embeddings_per_s, load: null });
    drawChart(field(totals, "history"), totalHistory, false);
    const model = all.length && all[0].labels ? all[0].labels.model : "";
    document.getElementById("model").textContent = model || "";
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
