//! `GET /asyncapi.json`: the AsyncAPI 3.0 document of the broker side
//! ([`crate::asyncapi::document`], generated from this process's settings), public like the
//! health routes: it names exchanges, queues and message shapes, never a credential.

use super::{
    ApiError,
    openapi::{Doc, shape},
    route::{Access, Endpoint, Request, json},
};

/// The AsyncAPI route.
pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::get("/asyncapi.json", Access::Public)
            .doc(
                Doc::new(
                    "asyncapi",
                    "The broker side in AsyncAPI 3.0 (exchanges, queues, messages)",
                )
                .answer(200, "The AsyncAPI document.", shape::any_object())
                .error(500, &["internal"]),
            )
            .to(|req: Request, (), ()| async move {
                let document = crate::asyncapi::document(&req.state.settings)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                json(&document)
            }),
    ]
}
