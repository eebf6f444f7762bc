// The browser side of deploykit's browser runners (deploykit/browser.py calls these through Playwright).
// Tensors cross as base64 of their raw bytes, so float32 values arrive bit-exact both ways; the page
// times its own calls (performance.now), since a round trip through the driver would be timed otherwise.
import {openModel, typedArray} from '/deploykit/backends.js';

let model = null;

async function decode(b64) {
  return (await fetch('data:application/octet-stream;base64,' + b64)).arrayBuffer();
}

function encode(typed) {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  if (bytes.toBase64) return bytes.toBase64();
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

async function feedsFrom(wire) {
  const feeds = {};
  for (const t of wire) feeds[t.name] = {dtype: t.dtype, shape: t.shape, data: typedArray(t.dtype, await decode(t.b64))};
  return feeds;
}

window.deploykit = {
  async open(runtime, modelUrl, threads) {
    const started = performance.now();
    model = await openModel(runtime, modelUrl, {threads, assets: '/node_modules/'});
    return {runtime: model.runtime, version: model.version, threads: model.threads, backend: model.backend,
            inputs: model.inputs, outputs: model.outputs, load_ms: performance.now() - started,
            cross_origin_isolated: crossOriginIsolated, user_agent: navigator.userAgent};
  },
  async run(wire) {
    const feeds = await feedsFrom(wire);
    const started = performance.now();
    const out = await model.run(feeds);
    const ms = performance.now() - started;
    return {ms, outputs: Object.entries(out).map(([name, t]) => ({name, dtype: t.dtype, shape: t.shape,
                                                                  b64: encode(t.data)}))};
  },
  async time(wire, timing) {
    // The harness's Timing, in the page: warm-up calls, then a fixed count or a time box (>= 3 calls).
    // V8 first runs WASM from its baseline compiler and tiers hot functions up to TurboFan while they run,
    // so after the asked warm-up the page goes on warming in rounds of 5 calls until a round's median is
    // no longer 3% faster than the one before (at most 40 rounds or 30 s): latencies are then steady-state.
    // --warmup 0 means none at all (a cold measurement), as in the harness.
    const feeds = await feedsFrom(wire);
    let calls = 0;
    const call = async () => { const t0 = performance.now(); await model.run(feeds); calls++; return performance.now() - t0; };
    for (let i = 0; i < timing.warmup; i++) await call();
    const median = (xs) => xs.slice().sort((a, b) => a - b)[xs.length >> 1];
    const warmUntil = performance.now() + 30e3;
    let previous = Infinity;
    for (let round = 0; timing.warmup > 0 && round < 40 && performance.now() < warmUntil; round++) {
      const times = [];
      for (let i = 0; i < 5; i++) times.push(await call());
      const current = median(times);
      if (current > previous * 0.97) break;
      previous = current;
    }
    const warmupCalls = calls;
    const times = [];
    const deadline = timing.seconds ? performance.now() + timing.seconds * 1e3 : null;
    while (deadline === null ? times.length < timing.iterations : (performance.now() < deadline || times.length < 3)) {
      times.push(await call());
    }
    return {times, warmup_calls: warmupCalls};
  },
  memory() {
    return {js_heap_bytes: performance.memory ? performance.memory.usedJSHeapSize : null};
  },
};
document.getElementById('state').textContent = 'ready';
