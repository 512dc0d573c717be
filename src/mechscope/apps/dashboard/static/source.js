// Where the views get their data: the server's JSON API, or the JSON embedded in a
// self-contained export (a <script type="application/json" id="mechscope-data"> keyed by API path).
export function makeSource() {
  const embedded = document.getElementById("mechscope-data");
  if (embedded) {
    const data = JSON.parse(embedded.textContent);
    return {
      embedded: true,
      async get(path) {
        if (!(path in data)) throw new Error(`not part of this export: ${path}`);
        return data[path];
      },
      async post(path) {
        throw new Error(`live views need the server started with --model (${path})`);
      },
    };
  }
  return {
    embedded: false,
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
