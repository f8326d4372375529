//! What every HTML page the hub serves shares: one layout, the security headers (a strict
//! Content-Security-Policy with no inline script, no framing, no sniffing, no caching) and the
//! CSRF check for forms. Pages are maud templates, so every interpolated string is escaped.
//! This module renders and checks; it decides nothing about who may see a page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use subtle::ConstantTimeEq;

/// Scripts: none. Styles: the hub's own stylesheet only. Forms post only to the hub; no page
/// may be framed; nothing else loads.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The stylesheet every page links (`/hub/static/lodge.css`): small, served by the hub itself.
pub const STYLESHEET: &str = include_str!("lodge.css");

/// A complete HTML page: the layout around `body`, with the security headers.
pub fn page(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Lodge" }
                link rel="stylesheet" href="/hub/static/lodge.css";
            }
            body {
                header { a href="/hub/" { "Lodge" } }
                main { (body) }
            }
        }
    };
    let mut response = (status, markup).into_response();
    secure_headers(response.headers_mut());
    response
}

/// A page that says what went wrong and what to do about it.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    page(
        status,
        title,
        html! {
            h1 { (title) }
            p.error role="alert" { (message) }
            p { a href="/hub/login" { "Sign in again" } }
        },
    )
}

/// `GET /hub/static/lodge.css`.
pub async fn stylesheet() -> Response {
    let mut r = (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

/// The headers every page carries.
pub fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not no-referrer: under it Chromium sends `Origin: null` with a page's own form POSTs, and
    // the Origin guard (rightly) refuses those. same-origin still gives other origins nothing,
    // so a client's redirect URI never sees the consent page's URL.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A hidden form field carrying the CSRF token.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// Does the form's CSRF token match the one the session holds? Constant time; an empty
/// expected token never matches.
pub fn csrf_ok(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_and_carry_the_headers() {
        let r = page(
            StatusCode::OK,
            "<t>",
            html! { p { ("<script>alert(1)</script>") } },
        );
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"));
        assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
        let text = html! { p { ("<script>alert(1)</script>") } }.into_string();
        assert!(
            !text.contains("<script>") && text.contains("&lt;script&gt;"),
            "{text}"
        );
    }

    #[test]
    fn csrf_compare() {
        assert!(csrf_ok("abc", "abc"));
        assert!(!csrf_ok("abc", "abd"));
        assert!(!csrf_ok("", ""));
    }
}
