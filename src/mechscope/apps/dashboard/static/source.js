// Where the views get their data: the server's JSON API, or the JSON embedded in a
// self-contained export (a <script type="application/json" id="mechscope-data"> keyed by API path).
// An export carries each feature database as a table of all its latents, and answers list pages
// and searches from it here, in the server's order (ties by latent, missing scores last).

const SORT_COLUMN = { latent: 0, density: 2, max_act: 3, score: 4 };
const LATENTS = /^\/api\/features\/([^/?]+)\/latents\?(.*)$/;
const SEARCH = /^\/api\/features\/([^/?]+)\/search\?(.*)$/;
const DETAIL = /^\/api\/features\/([^/?]+)\/latents\/(\d+)$/;

export function tableKey(db) {
  return `/export/features/${db}`;
}

// Lower-case words, as SQLite's default full-text tokenizer splits text.
function words(text) {
  return (String(text || "").toLowerCase().match(/[\p{L}\p{N}]+/gu)) || [];
}

// The cap message of an export whose latent pages stop before the last latent, else null.
export function capNote(table) {
  if (!table || table.pages >= table.total) return null;
  return `This file holds the pages of latents 0–${table.pages - 1} of ${table.total} (and those its graphs link to): ` +
    `its size cap is ${table.max_mb} MB (export with a larger --export-max-mb, or serve the database with ` +
    "`mechscope dashboard`). Every latent is still listed and searchable.";
}

function embeddedTables(data) {
  const sorted = new Map();
  function order(db, sort, dir) {
    const key = `${db} ${sort} ${dir}`;
    if (!sorted.has(key)) {
      const col = SORT_COLUMN[sort], sign = dir === "desc" ? -1 : 1;
      if (col === undefined) throw new Error(`unknown sort ${sort}; use one of ${Object.keys(SORT_COLUMN).join(", ")}`);
      sorted.set(key, [...data[tableKey(db)].rows].sort((a, b) => {
        const x = a[col], y = b[col], mx = x === null, my = y === null;
        if (mx !== my) return mx ? 1 : -1;
        if (!mx && x !== y) return sign * (x < y ? -1 : 1);
        return a[0] - b[0];
      }));
    }
    return sorted.get(key);
  }
  function page(db, params) {
    const sort = params.get("sort") || "latent", dir = params.get("order") || "asc";
    const offset = Number(params.get("offset") || 0), limit = Number(params.get("limit") || 50);
    const rows = order(db, sort, dir).slice(offset, offset + limit).map((r) => ({ latent: r[0], n_fired: r[1],
      density: r[2], max_act: r[3], score: r[4], explanation: r[5] }));
    return { db, total: data[tableKey(db)].total, offset, limit, sort, order: dir, rows };
  }
  // Each latent's searchable words with their counts, built once per database.
  const indexes = new Map();
  function index(db) {
    if (!indexes.has(db)) {
      indexes.set(db, data[tableKey(db)].rows.map((r) => {
        const counts = new Map();
        for (const w of words(`${r[6] ?? r[5] ?? ""} ${r[7]}`)) counts.set(w, (counts.get(w) || 0) + 1);
        return counts;
      }));
    }
    return indexes.get(db);
  }
  // Latents whose explanations or top tokens hold every word of the query, most occurrences first.
  function search(db, params) {
    const query = params.get("q") || "", limit = Number(params.get("limit") || 20);
    const wanted = [...new Set(words(query))];
    const hits = [];
    if (wanted.length) {
      const rows = data[tableKey(db)].rows, counted = index(db);
      for (let i = 0; i < rows.length; i++) {
        const r = rows[i], counts = counted[i];
        if (!wanted.every((w) => counts.has(w))) continue;
        hits.push({ latent: r[0], explanations: r[6] ?? r[5] ?? "", top_tokens: r[7],
          score: wanted.reduce((sum, w) => sum + counts.get(w), 0) });
      }
    }
    hits.sort((a, b) => b.score - a.score || a.latent - b.latent);
    return { db, query, hits: hits.slice(0, limit) };
  }
  return {
    answer(path) {
      let m = path.match(LATENTS);
      if (m && tableKey(m[1]) in data) return page(m[1], new URLSearchParams(m[2]));
      m = path.match(SEARCH);
      if (m && tableKey(m[1]) in data) return search(m[1], new URLSearchParams(m[2]));
      m = path.match(DETAIL);
      if (m && tableKey(m[1]) in data) {
        const note = capNote(data[tableKey(m[1])]);
        throw new Error(note ? `Latent ${m[2]}'s page is not in this export. ${note}`
          : `latent ${m[2]} is not in ${m[1]}`);
      }
      throw new Error(`not part of this export: ${path}`);
    },
  };
}

export function makeSource() {
  const embedded = document.getElementById("mechscope-data");
  if (embedded) {
    const data = JSON.parse(embedded.textContent);
    const tables = embeddedTables(data);
    return {
      embedded: true,
      note(db) {
        return capNote(data[tableKey(db)]);
      },
      async get(path) {
        return path in data ? data[path] : tables.answer(path);
      },
      async post(path) {
        throw new Error(`live views need the server started with --model (${path})`);
      },
    };
  }
  return {
    embedded: false,
    note() {
      return null;
    },
    async get(path) {
      const response = await fetch(path);
      const body = await response.json();
      if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
      return body;
    },
    async post(path, payload) {
      const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(payload) });
      const body = await response.json();
      if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
      return body;
    },
  };
}

export function latentsPath(db, sort, order, offset, limit) {
  return `/api/features/${db}/latents?sort=${sort}&order=${order}&offset=${offset}&limit=${limit}`;
}
