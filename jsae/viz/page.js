// the page's data: JSON, deflated and base64-encoded (jsae.viz.render_html); inflated by the browser itself
async function jsaePageData() {
  const bytes = Uint8Array.from(atob(document.getElementById('data').textContent.trim()), (c) => c.charCodeAt(0));
  const json = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  return JSON.parse(await new Response(json).text());
}

jsaePageData().then((D) => {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };
  const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(2));
  const pct = (f) => (f * 100 >= 1 ? (f * 100).toFixed(1) : (f * 100).toPrecision(2)) + '%';
  const tokStr = (id) => { const s = D.vocab[String(id)]; return s === undefined ? '<' + id + '>' : s; };
  const show = (s) => s.replace(/\n/g, '\u21b5').replace(/\t/g, '\u21e5');
  let cur = { sae: 0, latent: 0 };
  // a latent's compact contexts ([row, position, acts(, src_scale, src, outside)]: integers of the latent's
  // scale and of each context's source scale, token ids from the shared rows) as objects, once
  function decoded(l) {
    if (l.decoded) return l;
    const [left, right] = D.window;
    l.contexts = l.contexts.map((x) => {
      const row = D.rows[x[0]], t = x[1], lo = Math.max(0, t - left), hi = Math.min(row.length, t + right + 1);
      const c = { at: t - lo, ids: row.slice(lo, hi), acts: x[2].map((q) => q * l.as) };
      c.act = c.acts[c.at];
      if (D.sources) { c.src = x[4].map((q) => q * x[3]); c.src_outside = x[5] * x[3]; }
      return c;
    });
    l.hist = { lo: l.hist[0], counts: l.hist.slice(1) };
    l.decoded = true;
    return l;
  }

  $('info').textContent = Object.entries(D.info).map(([k, v]) => k + ': ' + v).join('  \u00b7  ') +
    (Object.keys(D.info).length ? '  \u00b7  ' : '') + D.n_tokens.toLocaleString() + ' tokens read';

  // SAE selector and, for per-head SAEs, the layer x head grid
  const sel = $('sae-select');
  D.saes.forEach((s, i) => { const o = el('option', null, s.label + '   (EV ' + fmt(s.ev) + ')'); o.value = i; sel.appendChild(o); });
  sel.addEventListener('change', () => selectSae(+sel.value));
  const grid = $('head-grid');
  if (D.per_head) {
    const L = Math.max(...D.saes.map((s) => s.layer)) + 1, H = Math.max(...D.saes.map((s) => s.head)) + 1;
    grid.style.gridTemplateColumns = 'auto repeat(' + H + ', 1fr)';
    grid.appendChild(el('span', 'glabel', ''));
    for (let h = 0; h < H; h++) grid.appendChild(el('span', 'glabel', String(h)));
    const at = {}; D.saes.forEach((s, i) => { at[s.layer + '.' + s.head] = i; });
    const evs = D.saes.map((s) => s.ev), lo = Math.min(...evs), hi = Math.max(...evs);
    for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
      if (h === 0) grid.appendChild(el('span', 'glabel', 'L' + l));
      const i = at[l + '.' + h], c = el('div', 'cell');
      if (i === undefined) { c.classList.add('none'); } else {
        const t = hi > lo ? (D.saes[i].ev - lo) / (hi - lo) : 1;
        c.style.background = 'hsl(' + (10 + 190 * t) + ',60%,' + (70 - 25 * t) + '%)';
        c.title = D.saes[i].label + ' \u00b7 EV ' + fmt(D.saes[i].ev);
        c.dataset.sae = i; c.addEventListener('click', () => selectSae(i));
      }
      grid.appendChild(c);
    }
  } else { $('grid-box').style.display = 'none'; }
  if (!D.sources) $('panel-sources').style.display = 'none';

  function actColour(a, max) { const t = max > 0 ? Math.max(0, Math.min(1, a / max)) : 0; return t <= 0 ? 'transparent' : 'rgba(251,143,68,' + (0.12 + 0.78 * t).toFixed(3) + ')'; }
  function srcColour(v, max) { if (!max) return 'transparent'; const t = Math.max(-1, Math.min(1, v / max)); return t >= 0 ? 'rgba(9,105,218,' + (0.85 * t).toFixed(3) + ')' : 'rgba(207,34,46,' + (-0.85 * t).toFixed(3) + ')'; }

  function tokens(ctx, colour, upto) {
    const box = el('span', 'toks');
    const n = upto === undefined ? ctx.ids.length : upto;
    for (let i = 0; i < n; i++) {
      const t = el('span', 'tok' + (i === ctx.at ? ' at' : ''), show(tokStr(ctx.ids[i])));
      const [bg, title] = colour(i); t.style.background = bg; t.title = title;
      box.appendChild(t);
    }
    return box;
  }

  function selectSae(i) {
    cur.sae = i; sel.value = i;
    grid.querySelectorAll('.cell').forEach((c) => c.classList.toggle('sel', +c.dataset.sae === i && c.dataset.sae !== undefined));
    const s = D.saes[i];
    $('sae-stats').innerHTML = '';
    $('sae-stats').append(el('div', null, 'explained variance ' + fmt(s.ev) + ' \u00b7 L0 ' + fmt(s.l0)),
      el('div', null, 'latents shown that never fired: ' + pct(s.dead)));
    const list = $('latent-list'); list.innerHTML = '';
    const maxf = Math.max(1e-12, ...s.latents.map((l) => l.freq));
    s.latents.forEach((l, j) => {
      const b = el('button'); b.dataset.latent = j;
      const bar = el('span', 'bar'), fill = el('i'); fill.style.width = (100 * l.freq / maxf).toFixed(1) + '%'; bar.appendChild(fill);
      b.append(el('span', 'num', '#' + l.index), bar, el('span', 'pct', pct(l.freq)));
      b.addEventListener('click', () => selectLatent(j));
      list.appendChild(b);
    });
    selectLatent(Math.min(cur.latent, s.latents.length - 1));
  }

  function selectLatent(j) {
    cur.latent = j;
    const s = D.saes[cur.sae], l = decoded(s.latents[j]);
    document.querySelectorAll('#latent-list button').forEach((b) => b.classList.toggle('sel', +b.dataset.latent === j));
    $('latent-title').textContent = s.label + ' \u00b7 latent ' + l.index;
    const st = $('latent-stats'); st.innerHTML = '';
    const maxAct = l.contexts.length ? l.contexts[0].act : 0;
    [['fires on', pct(l.freq) + ' of tokens'], ['max activation', fmt(maxAct)], ['SAE explained variance', fmt(s.ev)], ['SAE L0', fmt(s.l0)]]
      .forEach(([k, v], n) => { if (n) st.append('  \u00b7  '); st.append(k + ' '); st.append(el('b', null, v)); });

    const ctxBody = document.querySelector('#panel-contexts .body'); ctxBody.innerHTML = '';
    if (!l.contexts.length) ctxBody.appendChild(el('div', 'empty', 'This latent never fired on the tokens read.'));
    l.contexts.forEach((c) => {
      const row = el('div', 'ctx'); row.appendChild(el('span', 'val', fmt(c.act)));
      row.appendChild(tokens(c, (i) => [actColour(c.acts[i], maxAct), 'activation ' + fmt(c.acts[i])]));
      ctxBody.appendChild(row);
    });

    drawHist(l); drawLogits(l);
    if (D.sources) drawSources(l);
  }

  function drawHist(l) {
    const body = document.querySelector('#panel-hist .body'); body.innerHTML = '';
    if (!l.hist.counts.length) { body.appendChild(el('div', 'empty', 'No activations.')); return; }
    const W = 360, Hh = 130, pad = 22, n = l.hist.counts.length, max = Math.max(...l.hist.counts);
    const ns = 'http://www.w3.org/2000/svg', svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + (Hh + pad)); svg.setAttribute('width', '100%');
    const bw = (W - 10) / n;
    l.hist.counts.forEach((c, i) => {
      const h = c ? Math.max(1, (Hh - 8) * Math.log1p(c) / Math.log1p(max)) : 0, r = document.createElementNS(ns, 'rect');
      r.setAttribute('x', 5 + i * bw); r.setAttribute('y', Hh - h); r.setAttribute('width', Math.max(1, bw - 1)); r.setAttribute('height', h);
      r.setAttribute('fill', '#fb8f44');
      const tt = document.createElementNS(ns, 'title'); tt.textContent = fmt(D.edges[l.hist.lo + i]) + ' \u2013 ' + fmt(D.edges[l.hist.lo + i + 1]) + ': ' + c + ' tokens';
      r.appendChild(tt); svg.appendChild(r);
    });
    [[0, D.edges[l.hist.lo]], [n, D.edges[l.hist.lo + n]]].forEach(([i, v], k) => {
      const t = document.createElementNS(ns, 'text'); t.setAttribute('x', k ? W - 5 : 5); t.setAttribute('y', Hh + 14);
      t.setAttribute('text-anchor', k ? 'end' : 'start'); t.textContent = fmt(v); svg.appendChild(t);
    });
    const t = document.createElementNS(ns, 'text'); t.setAttribute('x', W / 2); t.setAttribute('y', Hh + 14); t.setAttribute('text-anchor', 'middle');
    t.textContent = 'activation (log-spaced bins; bar height ~ log count)'; svg.appendChild(t);
    body.appendChild(svg);
  }

  function drawLogits(l) {
    const body = document.querySelector('#panel-logits .body'); body.innerHTML = '';
    const box = el('div', 'logits'), max = Math.max(1e-12, ...l.up[1].map(Math.abs), ...l.down[1].map(Math.abs));
    [['promoted', l.up, '#1a7f37'], ['suppressed', l.down, '#cf222e']].forEach(([name, [ids, vals], colour]) => {
      const col = el('div'); col.appendChild(el('h4', null, name));
      ids.forEach((id, i) => {
        const r = el('div', 'lrow'), b = el('span', 'b'), f = el('i');
        f.style.width = (100 * Math.abs(vals[i]) / max).toFixed(1) + '%'; f.style.background = colour; b.appendChild(f);
        r.append(el('span', 't', show(tokStr(id))), b, el('span', 'v', fmt(vals[i]))); col.appendChild(r);
      });
      box.appendChild(col);
    });
    body.appendChild(box);
  }

  function drawSources(l) {
    const body = document.querySelector('#panel-sources .body'); body.innerHTML = '';
    if (!l.contexts.length) { body.appendChild(el('div', 'empty', 'No contexts.')); return; }
    body.appendChild(el('div', 'srcnote', 'Blue: the token raises the latent, red: lowers it; the activating token is outlined. ' +
      'Constant term (biases) ' + fmt(l.constant) + '.'));
    l.contexts.forEach((c) => {
      const max = Math.max(1e-12, ...c.src.map(Math.abs));
      const row = el('div', 'ctx');
      const order = c.src.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0]).slice(0, 2);
      row.appendChild(el('span', 'val', fmt(c.act)));
      const toks = tokens(c, (i) => [srcColour(c.src[i], max), 'contribution ' + fmt(c.src[i])], c.src.length);
      row.appendChild(toks);
      const best = el('span', 'hint', '  \u2190 ' + order.map(([v, i]) => JSON.stringify(tokStr(c.ids[i])) + ' ' + fmt(v)).join(', ') +
        (Math.abs(c.src_outside) > 1e-6 ? ' \u00b7 earlier tokens ' + fmt(c.src_outside) : ''));
      row.appendChild(best);
      body.appendChild(row);
    });
  }

  selectSae(0);
  window.__jsae_page_ready = true;
}).catch((e) => {
  document.getElementById('latent-title').textContent = 'This page could not read its data (' + e + '); open it in a current browser.';
  throw e;
});
