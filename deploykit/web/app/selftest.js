// Run every golden sample through the bundle's model in this browser; show the parity table.
// The outcome is also left in document.body.dataset.result ("passed" / "failed" / "error") for automation.
import {openModel} from './backends.js';
import {judge, loadGolden, threadsHere} from './golden.js';

const $ = (id) => document.getElementById(id);
try {
  const config = await (await fetch('web.json')).json();
  const golden = await loadGolden();
  const model = await openModel(config.runtime, config.model, {threads: threadsHere(), assets: 'vendor/'});
  const results = [];
  for (const sample of golden) results.push(await model.run(sample.inputs));
  const rows = Object.keys(golden[0].outputs).map((name) => ({name, ...judge(
    golden.map((s) => s.outputs[name]), results.map((r) => r[name]), config.tolerance)}));
  const passed = rows.every((r) => r.ok);
  const table = $('parity');
  // Output names come from the model file: cells are built with textContent, never parsed as HTML.
  const cells = (tag, texts, classes = []) => {
    const tr = table.insertRow();
    texts.forEach((text, i) => {
      const cell = tr.appendChild(document.createElement(tag));
      cell.textContent = text;
      if (classes[i]) cell.className = classes[i];
    });
  };
  cells('th', ['output', 'result', 'detail']);
  for (const row of rows) cells('td', [row.name, row.ok ? 'pass' : 'FAIL', row.detail], ['', row.ok ? 'pass' : 'fail']);
  $('status').textContent = `self-test ${passed ? 'passed' : 'FAILED'}: ${rows.length} output(s) on ${golden.length} ` +
    `golden sample(s), tolerance ${config.tolerance.preset}, on ${model.runtime} (${model.backend}, ` +
    `${model.threads} thread(s))`;
  window.selftest = {passed, rows: rows.map(({name, ok, detail}) => ({name, ok, detail}))};
  document.body.dataset.result = passed ? 'passed' : 'failed';
} catch (error) {
  $('status').textContent = `self-test could not run: ${error.message ?? error}`;
  window.selftest = {passed: false, error: String(error.message ?? error)};
  document.body.dataset.result = 'error';
}
