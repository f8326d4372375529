//! Placeholder for browser sign-in (web sessions), which the sign-in work provides; until it is
//! merged nobody is ever signed in, so `/oauth/authorize` sends everyone to `/hub/login`.

use crate::Hub;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lodge_core::UserName;

pub struct WebUser {
    pub user_id: i64,
    pub user: UserName,
    pub admin: bool,
    pub profile: String,
    pub session_id: String,
    pub csrf: String,
}

pub async fn signed_in(_hub: &Hub, _headers: &HeaderMap) -> Option<WebUser> {
    None
}

pub fn login_redirect(next: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    let to: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("next", next)
        .finish();
    if let Ok(v) = HeaderValue::from_str(&format!("/hub/login?{to}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
