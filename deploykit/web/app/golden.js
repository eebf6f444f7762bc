// Golden vectors (inputs and the source model's outputs) from golden-web.json + golden.bin, and the rule
// deploykit judges them by (deploykit.parity; the same as app.py's): integers exactly; floats pooled over
// the samples, atol scaled by the largest finite |reference|, then the mismatch fraction and the cosine.
import {typedArray} from './backends.js';

export function threadsHere() {
  // Threads need SharedArrayBuffer, i.e. a cross-origin-isolated page (COOP/COEP headers).
  return crossOriginIsolated ? Math.min(navigator.hardwareConcurrency || 1, 4) : 1;
}

export async function loadGolden() {
  const index = await (await fetch('golden-web.json')).json();
  const bytes = await (await fetch('golden.bin')).arrayBuffer();
  const tensors = (list) => Object.fromEntries(list.map((t) => [t.name, {
    dtype: t.dtype, shape: t.shape, data: typedArray(t.dtype, bytes.slice(t.offset, t.offset + t.bytes))}]));
  return index.samples.map((s) => ({inputs: tensors(s.inputs), outputs: tensors(s.outputs)}));
}

export function judge(references, results, tolerance) {
  if (references.some((r, i) => r.shape.join() !== results[i].shape.join())) return {detail: 'shape differs', ok: false};
  const isFloat = (t) => t.dtype.startsWith('float');
  if (isFloat(references[0]) !== isFloat(results[0])) {
    return {detail: `dtype ${results[0].dtype} != ${references[0].dtype}`, ok: false};
  }
  if (!isFloat(references[0])) {
    let differ = 0;
    // Number(): an int64 reference (BigInt) against an int32 result compares by value, as numpy does.
    references.forEach((r, i) => r.data.forEach((v, j) => { if (Number(v) !== Number(results[i].data[j])) differ++; }));
    return {detail: `${differ} integer value(s) differ`, ok: differ === 0};
  }
  const ref = references.flatMap((r) => Array.from(r.data, Number));
  const got = results.flatMap((r) => Array.from(r.data, Number));
  let scale = 0;
  for (const v of ref) if (Number.isFinite(v)) scale = Math.max(scale, Math.abs(v));
  const atol = tolerance.scale_by_reference ? tolerance.atol * Math.max(1, scale) : tolerance.atol;
  let bad = 0, worst = 0, dot = 0, na = 0, nb = 0;
  ref.forEach((a, i) => {
    const b = got[i];
    if (Number.isFinite(a) && Number.isFinite(b)) {
      const diff = Math.abs(b - a);
      if (diff > atol + tolerance.rtol * Math.abs(a)) bad++;
      worst = Math.max(worst, diff); dot += a * b; na += a * a; nb += b * b;
    } else if (!(Number.isNaN(a) === false && !Number.isFinite(a) && a === b)) {
      bad++;    // a non-finite value matches only the same infinity; NaN never
    }
  });
  const norms = Math.sqrt(na) * Math.sqrt(nb);
  const cosine = norms ? dot / norms : (na === 0 && nb === 0 ? 1 : 0);
  const fraction = ref.length ? bad / ref.length : 0;
  return {detail: `max_abs ${worst.toPrecision(3)}, cosine ${cosine.toFixed(6)}, ${(100 * fraction).toFixed(2)}% outside`,
          ok: fraction <= tolerance.max_mismatch && cosine >= tolerance.min_cosine, max_abs: worst, cosine};
}
