"""The inline step-up door: the `stepguard.js` module an application includes, and the rules
for the dialog frame that module opens on Stepguard's origin.

- The module (`static/inline/stepguard.js`, an npm-style ES module in this package) is served at
  `MODULE_PATH` with CORS for the allowed application origins only (module scripts are fetched
  in CORS mode), never with credentials.
- The dialog frame is the step-up page in its embedded view (`/step-up/{cid}/inline?origin=O`):
  framable only by the portal's own origin and the configured `inline.allowed_origins`
  (`frame-ancestors`), and it answers its parent with `postMessage(message, O)` where O is one
  of those exact origins — a page of any other origin gets a refusal, never a frame.
- Secrets (codes, passkey assertions) are typed and sent inside the frame, on Stepguard's origin;
  the application's DOM sees only "passed", "cancelled" and the challenge id.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from stepguard.service.runtime import Runtime
from stepguard.web.security import CONTENT_SECURITY_POLICY

MODULE_DIR = Path(__file__).parent / "static" / "inline"
MODULE_PATH = "/static/inline/stepguard.js"
_FRAME_ANCESTORS = "frame-ancestors 'none'"


class InlineFrames:
    """Which origins may use the inline dialog, and the headers its frame pages carry."""

    def __init__(self, runtime: Runtime) -> None:
        public = urlsplit(runtime.config.server.public_url)
        self.own_origin = f"{public.scheme}://{public.netloc}".lower()
        self.enabled = runtime.config.inline.enabled
        self.origins = frozenset({self.own_origin, *runtime.config.inline.allowed_origins})
        ancestors = " ".join(["'self'", *sorted(self.origins - {self.own_origin})])
        self.ancestors = f"frame-ancestors {ancestors}"
        self.policy = CONTENT_SECURITY_POLICY.replace(_FRAME_ANCESTORS, self.ancestors)
        self._module = (MODULE_DIR / "stepguard.js").read_bytes()

    def allows(self, origin: str | None) -> bool:
        """An exact, configured origin (compared as sent: browsers send it lower-case)."""
        return self.enabled and origin is not None and origin in self.origins

    def query(self, origin: str) -> str:
        """The query string that keeps a page in its embedded view for this parent."""
        return f"?view=inline&origin={quote(origin, safe='')}"

    def framable(self, response: Response) -> Response:
        """Let the allowed origins (and only them) frame this page."""
        # The page's own policy (widened `form-action` with identity providers), reframed.
        current = response.headers.get("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers["Content-Security-Policy"] = current.replace(
            _FRAME_ANCESTORS, self.ancestors)
        response.headers["X-Frame-Options"] = "SAMEORIGIN"  # ignored where CSP is honoured
        # The popup variant must keep its opener (an allowed origin) to answer it.
        response.headers["Cross-Origin-Opener-Policy"] = "unsafe-none"
        return response

    async def module(self, request: Request) -> Response:
        """The ES module; CORS for an allowed origin (exact echo, `Vary: Origin`)."""
        if not self.enabled:
            return PlainTextResponse("not found\n", 404)
        headers = {"Vary": "Origin", "Cache-Control": "no-cache",
                   "Cross-Origin-Resource-Policy": "cross-origin",
                   "X-Content-Type-Options": "nosniff"}
        origin = request.headers.get("origin")
        if origin is not None and self.allows(origin):
            headers["Access-Control-Allow-Origin"] = origin
        return Response(self._module, media_type="text/javascript; charset=utf-8",
                        headers=headers)
