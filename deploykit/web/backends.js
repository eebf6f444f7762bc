// deploykit's adapters for the browser runtimes: one interface over onnxruntime-web and LiteRT.js.
// Used by deploykit's own harness page (verify, bench) and by `deploykit package --app web` bundles,
// so the app a developer ships runs the model exactly as deploykit checked it.
//
//   const model = await openModel('onnxruntime-web', 'model.onnx', {threads: 1, assets: '/node_modules/'});
//   const outputs = await model.run({input: {dtype: 'float32', shape: [1, 3, 224, 224], data: Float32Array}});
//
// A tensor is {dtype, shape, data: TypedArray}; run() takes and returns them by name.

const TYPED = {
  float32: Float32Array, float64: Float64Array, float16: globalThis.Float16Array ?? Uint16Array,
  int32: Int32Array, int64: BigInt64Array,
  int16: Int16Array, int8: Int8Array, uint8: Uint8Array, uint16: Uint16Array, bool: Uint8Array,
};

export function typedArray(dtype, buffer) {
  const kind = TYPED[dtype];
  if (!kind) throw new Error(`dtype ${dtype} is not supported in the browser`);
  return new kind(buffer);
}

function absolute(path) {
  // ORT resolves wasmPaths against its own module, LiteRT against the page: give both a full URL.
  return new URL(path, document.baseURI).href;
}

async function openOnnxRuntimeWeb(modelUrl, {threads, assets}) {
  const ort = await import(absolute(assets + 'onnxruntime-web/dist/ort.wasm.min.mjs'));
  ort.env.wasm.wasmPaths = absolute(assets + 'onnxruntime-web/dist/');
  // More than one thread needs SharedArrayBuffer, which only a cross-origin-isolated page has.
  ort.env.wasm.numThreads = crossOriginIsolated ? threads : 1;
  ort.env.logLevel = 'error';
  const session = await ort.InferenceSession.create(modelUrl, {
    executionProviders: ['wasm'], graphOptimizationLevel: 'all',
  });
  const details = (names, metadata) => names.map((name, i) => ({
    name, dtype: metadata?.[i]?.type ?? '?', shape: metadata?.[i]?.shape ?? [],
  }));
  return {
    runtime: 'onnxruntime-web', version: ort.env.versions?.web ?? '?',
    threads: ort.env.wasm.numThreads, backend: 'wasm (SIMD' + (ort.env.wasm.numThreads > 1 ? ', threaded)' : ')'),
    inputs: details(session.inputNames, session.inputMetadata),
    outputs: details(session.outputNames, session.outputMetadata),
    async run(feeds) {
      const tensors = {};
      for (const [name, t] of Object.entries(feeds)) tensors[name] = new ort.Tensor(t.dtype, t.data, t.shape);
      const results = await session.run(tensors);
      const out = {};
      for (const name of session.outputNames) {
        const r = results[name];
        out[name] = {dtype: r.type, shape: Array.from(r.dims), data: r.data};
      }
      return out;
    },
    async release() { await session.release(); },
  };
}

async function openLiteRtJs(modelUrl, {threads, assets}) {
  const litert = await import('@litertjs/core');   // resolved by the page's import map
  const multi = threads > 1 && crossOriginIsolated;
  if (!litert.getGlobalLiteRtPromise()) {
    await litert.loadLiteRt(absolute(assets + '@litertjs/core/wasm/'), {threads: multi});
  }
  const model = await litert.loadAndCompile(modelUrl, {
    accelerator: 'wasm', cpuOptions: {numThreads: multi ? threads : 1},
  });
  const keys = Object.keys(model.signatures);
  const signature = keys.includes('serving_default') ? model.signatures.serving_default
    : keys.length ? model.signatures[keys.sort()[0]] : model;
  const details = (list) => list.map((d) => ({name: d.name, dtype: d.dtype, shape: Array.from(d.shape)}));
  return {
    runtime: 'litert-js', version: '?', threads: multi ? threads : 1, backend: 'wasm (XNNPACK)',
    inputs: details(signature.getInputDetails()), outputs: details(signature.getOutputDetails()),
    async run(feeds) {
      const inputs = {};
      for (const [name, t] of Object.entries(feeds)) inputs[name] = new litert.Tensor(t.data, t.shape);
      const results = await signature.run(inputs);
      const out = {};
      for (const [name, tensor] of Object.entries(results)) {
        out[name] = {dtype: tensor.type.dtype, shape: Array.from(tensor.type.layout.dimensions),
                     data: (await tensor.data()).slice()};
        tensor.delete();
      }
      for (const tensor of Object.values(inputs)) tensor.delete();
      return out;
    },
    async release() { model.delete(); },
  };
}

const OPENERS = {'onnxruntime-web': openOnnxRuntimeWeb, 'litert-js': openLiteRtJs};

export async function openModel(runtime, modelUrl, {threads = 1, assets = '/node_modules/'} = {}) {
  const open = OPENERS[runtime];
  if (!open) throw new Error(`unknown browser runtime ${runtime}`);
  return open(modelUrl, {threads, assets});
}
