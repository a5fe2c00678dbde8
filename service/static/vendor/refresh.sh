#!/usr/bin/env bash
# Refresh the vendored browser files of the web page and the API docs (no CDN at run time).
# Needs npm and the registry; writes only into this folder. Usage: service/static/vendor/refresh.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
NIIVUE=0.69.0 SWAGGER=5 REDOC=2
(cd "$tmp" && npm init -y >/dev/null &&
    npm install --no-audit --no-fund --ignore-scripts \
        "@niivue/niivue@$NIIVUE" "swagger-ui-dist@$SWAGGER" "redoc@$REDOC" >/dev/null)
m="$tmp/node_modules"
rm -rf "$here/swagger-ui" "$here/redoc"
mkdir -p "$here/niivue" "$here/swagger-ui" "$here/redoc"
# NiiVue's UMD bundle is self-contained (its index.min.js is an encoded loader, not the code).
cp "$m/@niivue/niivue/dist/niivue.umd.js" "$here/niivue/"
cp "$m/swagger-ui-dist/"{swagger-ui-bundle.js,swagger-ui.css,LICENSE,NOTICE} "$here/swagger-ui/"
cp "$m/redoc/bundles/redoc.standalone.js" "$m/redoc/LICENSE" "$here/redoc/"
# ReDoc's side menu shows a logo from cdn.redoc.ly: an empty inline image instead (offline).
sed -i "s#https://cdn.redoc.ly/redoc/logo-mini.svg#data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E#" \
    "$here/redoc/redoc.standalone.js"
grep -q cdn.redoc.ly "$here/redoc/redoc.standalone.js" && { echo "redoc still loads from its CDN" >&2; exit 1; }
for pkg in @niivue/niivue swagger-ui-dist redoc; do
    node -p "const p=require('$m/$pkg/package.json'); p.name+' '+p.version+' '+p.license"
done > "$here/VERSIONS"
# NiiVue's npm package ships no LICENSE file: niivue/LICENSE (BSD-2-Clause, as its
# package.json says) is kept in git and left as it is.
cat "$here/VERSIONS"
