"""The sandbox's verification page (``GET /device``): approve a device-flow code by hand.

The page's one inline script is allowed by its hash in a strict Content-Security-Policy; the user
code from the query string is shown only when it is alphanumeric (with dashes), HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html

DEVICE_PAGE_CSP = (
    "default-src 'none'; script-src 'sha256-{hash}'; connect-src 'self'; style-src 'unsafe-inline'"
)
_PAGE_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Danube sandbox: approve a device</title>
<style>body{font-family:sans-serif;max-width:36em;margin:3em auto}input{font-size:1.2em}</style></head>
<body><h1>Approve a device (Danube sandbox)</h1>
<p>A program asked for a sandbox API key. Approve it only if you started it and the code matches.</p>
<form id="f"><p><label>Code <input id="c" value="{user_code}" autocomplete="off"></label></p>
<p><label>Your sandbox API key <input id="k" type="password" autocomplete="off"></label></p>
<p><button>Approve</button></p></form><p id="r" role="status"></p>
<p>Or from a terminal: <code>curl -X POST -H 'danube-api-key: YOUR_KEY' -H 'content-type: application/json'
-d '{"user_code": "CODE"}' THIS_SERVER/v1/_device/approve</code></p>
<script>SCRIPT</script></body></html>"""
_SCRIPT = (
    "document.getElementById('f').onsubmit=async e=>{e.preventDefault();"
    "const r=await fetch('/v1/_device/approve',{method:'POST',headers:{'content-type':'application/json',"
    "'danube-api-key':document.getElementById('k').value},"
    "body:JSON.stringify({user_code:document.getElementById('c').value})});"
    "const j=await r.json();document.getElementById('r').textContent="
    "r.ok?'Approved: you can close this page.':(j.error&&j.error.message)||'failed';};"
)
_PAGE_TEMPLATE = _PAGE_TEMPLATE.replace("SCRIPT", _SCRIPT)
DEVICE_PAGE_CSP = DEVICE_PAGE_CSP.replace(
    "{hash}", base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
)


def render_device_page(user_code: str) -> str:
    shown = html.escape(user_code[:20]) if user_code.replace("-", "").isalnum() else ""
    return _PAGE_TEMPLATE.replace("{user_code}", shown)
