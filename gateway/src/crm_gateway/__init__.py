"""The CRM API gateway: authentication, the tenant directory and routing, REST over gRPC, OpenAPI; and crmctl."""
