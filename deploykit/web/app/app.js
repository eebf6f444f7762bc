// The bundle's app: load the model in the browser's WASM runtime, preprocess as contract.json says,
// run, and show labelled top-k for class scores (or the output tensor otherwise).
import {openModel} from './backends.js';
import {loadGolden, threadsHere} from './golden.js';

const $ = (id) => document.getElementById(id);
const config = await (await fetch('web.json')).json();
const contract = await (await fetch('contract.json')).json();
$('title').textContent = config.title;
let labels = {};
for (const output of contract.outputs) {
  if (output.labels) labels[output.name] = (await (await fetch(output.labels)).text()).replace(/\n$/, '').split('\n');
}

const started = performance.now();
const model = await openModel(config.runtime, config.model, {threads: threadsHere(), assets: 'vendor/'});
const loadMs = performance.now() - started;
const status = (extra = '') => {
  $('status').textContent = `${model.runtime} · ${model.backend} · ${model.threads} thread(s) · ` +
    `loaded in ${loadMs.toFixed(0)} ms${extra}`;
};
status();

const imageInput = contract.inputs.length === 1 && contract.inputs[0].image ? contract.inputs[0] : null;

export function imageFeeds(spec, source) {
  // Stretch to the contract's size, RGB (or luma), value * scale, minus mean, over std, in its layout.
  const {width, height, channels, scale, mean, std} = spec.image;
  const canvas = $('preview');
  canvas.width = width; canvas.height = height;
  const context = canvas.getContext('2d', {willReadFrequently: true});
  context.drawImage(source, 0, 0, width, height);
  const rgba = context.getImageData(0, 0, width, height).data;
  const data = new Float32Array(channels * height * width);
  const nchw = spec.layout === 'NCHW';
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = (y * width + x) * 4;
      for (let c = 0; c < channels; c++) {
        const raw = channels === 1 ? 0.299 * rgba[p] + 0.587 * rgba[p + 1] + 0.114 * rgba[p + 2] : rgba[p + c];
        const value = (raw * scale - mean[c % mean.length]) / std[c % std.length];
        data[nchw ? c * height * width + y * width + x : (y * width + x) * channels + c] = value;
      }
    }
  }
  const shape = nchw ? [1, channels, height, width] : [1, height, width, channels];
  return {[spec.name]: {dtype: 'float32', shape, data}};
}

// Names and labels come from the model file and the label file, which are not trusted: every cell is built with
// textContent, so markup in them shows as text and never runs (no innerHTML anywhere in the app).
function row(table, cells) {
  const tr = table.insertRow();
  for (const [tag, text, className] of cells) {
    const cell = tr.appendChild(document.createElement(tag));
    cell.textContent = text;
    if (className) cell.className = className;
  }
  return tr;
}

function bar(score) {
  const div = document.createElement('div');
  div.className = 'bar';
  div.style.width = `${Math.round(score * 160)}px`;    // CSSOM, not a style attribute: the CSP allows it
  return div;
}

function show(outputs) {
  const table = $('results');
  table.replaceChildren();
  for (const spec of contract.outputs) {
    const out = outputs[spec.name];
    if (spec.meaning !== 'class_scores') {
      const values = Array.from(out.data.slice(0, 16), Number).map((v) => v.toPrecision(4));
      row(table, [['th', `${spec.name} [${out.shape.join('×')}]`],
                  ['td', values.join(', ') + (out.data.length > 16 ? ', …' : '')]]);
      continue;
    }
    const classes = out.shape[out.shape.length - 1];
    let scores = Array.from(out.data.slice(0, classes), Number);
    if (spec.postprocess === 'softmax') {
      const top = Math.max(...scores);
      const exp = scores.map((s) => Math.exp(s - top));
      const sum = exp.reduce((a, b) => a + b, 0);
      scores = exp.map((e) => e / sum);
    }
    const order = scores.map((s, i) => [s, i]).sort((a, b) => b[0] - a[0]).slice(0, spec.top_k || 5);
    row(table, [['th', spec.name], ['th', 'score'], ['th', '']]);
    for (const [score, index] of order) {
      const name = labels[spec.name]?.[index] ?? String(index);
      row(table, [['td', name], ['td', score.toFixed(4), 'num'], ['td', '']]).lastChild.appendChild(bar(score));
    }
  }
}

async function predict(feeds) {
  const t0 = performance.now();
  const outputs = await model.run(feeds);
  status(` · inference ${(performance.now() - t0).toFixed(1)} ms`);
  show(outputs);
  document.body.dataset.predicted = 'yes';
}

async function fromFile(file) {
  const bitmap = await createImageBitmap(file);
  await predict(imageFeeds(imageInput, bitmap));
}

if (imageInput) {
  $('drop').hidden = false;
  $('file').addEventListener('change', (e) => e.target.files[0] && fromFile(e.target.files[0]));
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault(); drop.classList.remove('over');
    if (e.dataTransfer.files[0]) fromFile(e.dataTransfer.files[0]);
  });
} else {
  $('tensor').hidden = false;
  $('run-golden').addEventListener('click', async () => predict((await loadGolden())[0].inputs));
}
document.body.dataset.ready = 'yes';
