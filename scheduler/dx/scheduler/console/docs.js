// The API's reference page: Swagger UI over this server's own OpenAPI document, every file from this server.
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui" });
