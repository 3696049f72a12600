"""The Flask application factory."""

from __future__ import annotations

from collections.abc import Iterable

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from crm_gateway import openapi
from crm_gateway.config import MAX_BODY_BYTES, Settings, load_settings
from crm_gateway.rest import auth_routes, guard, methods, privacy, problems, resources, users
from crm_gateway.runtime import EXTENSION, Gateway


def create_app(settings: Settings | None = None, extra_method_routes: Iterable[methods.MethodRoute] = ()) -> Flask:
    """Build the gateway. Expects a migrated database (``crm-gateway migrate``).

    `extra_method_routes` adds custom-method routes beyond methods.METHOD_ROUTES (tests).
    """
    settings = settings or load_settings()
    app = Flask("crm_gateway", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["TRAP_HTTP_EXCEPTIONS"] = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    proxies = settings.gateway.trusted_proxies
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    app.extensions[EXTENSION] = Gateway(settings)
    problems.register(app)
    guard.install(app)
    auth_routes.register(app)
    resources.register(app)
    methods.register(app, (*methods.METHOD_ROUTES, *extra_method_routes))
    privacy.register(app)
    users.register(app)
    openapi.register(app)
    return app
