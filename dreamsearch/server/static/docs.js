// The API's interactive docs: Swagger UI (from the fastapi-offline wheel, served by this
// server, never a CDN) over /openapi.json. A file, not an inline script: the page's
// Content-Security-Policy allows scripts from this server only.
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
