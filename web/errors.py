"""Error pages: HTTP errors styled and in the UI language; an expired session keeps the draft."""

from __future__ import annotations

from flask import Blueprint, render_template, request, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from web.common import local_path

bp = Blueprint("errors", __name__)

# What a person reads for each error; werkzeug's own texts are English and technical.
PAGES = {
    400: (_l("The request could not be understood"),
          _l("Something in the form was missing or malformed. Go back, check it and try again.")),
    403: (_l("Not allowed"), _l("You may not do this.")),
    404: (_l("Page not found"),
          _l("This address leads nowhere: the page was removed, or the link is wrong or has expired.")),
    405: (_l("This action cannot be done this way"),
          _l("The page was opened in a way it does not accept (for example a link instead of a button). "
             "Go back and use the button on the page.")),
    413: (_l("The file is too large"),
          _l("The upload is larger than the server accepts. Split the file into smaller parts.")),
    500: (_l("Something went wrong on our side"),
          _l("The error was logged. Nothing you entered was lost by it: go back and try again; "
             "if it happens again, tell the administrator.")),
}
SECRET_FIELDS = ("password", "csrf_token")  # never rendered back into a page


@bp.app_errorhandler(CSRFError)
def session_expired(exc: CSRFError):
    """An expired or missing CSRF token or session: say so in the UI language and keep the draft.

    The form's text comes back on the page (editable), a fresh token lets a person who is
    still logged in save it again, and app.js keeps it across a new login when the session is gone.
    """
    draft = [(name, value) for name, value in request.form.items(multi=True)
             if value and not any(secret in name.lower() for secret in SECRET_FIELDS)]
    back = local_path(_same_site_path(request.referrer) or request.path)
    return render_template("session_expired.html", draft=draft, action=request.path, back=back,
                           logged_in=current_user.is_authenticated,
                           login_url=url_for("auth.login", next=back)), 400


def _same_site_path(url: str | None) -> str | None:
    """The path (and query) of a Referer on this site, else None."""
    if not url or not url.startswith(request.host_url):
        return None
    return "/" + url[len(request.host_url):]


@bp.app_errorhandler(HTTPException)
def http_error(exc: HTTPException):
    """A styled page in the UI language for 400, 403, 404, 405, 413 and 500 alike."""
    if exc.code not in PAGES:
        return exc
    title, explanation = PAGES[exc.code]
    response = exc.get_response()
    response.set_data(render_template("http_error.html", code=exc.code, title=title,
                                      explanation=explanation))
    response.content_type = "text/html; charset=utf-8"
    return response
