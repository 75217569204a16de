//! Administration of the store: the backup stream that `anamnesis backup`
//! reads while the service runs.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::resource;
use crate::audit::{self, Action};
use crate::auth::{Authorized, BackupStore};
use crate::error::{ApiError, ErrorBody};
use crate::service::backup::STREAM_TYPE;
use crate::service::Services;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/admin/backup", "GET").route(web::get().to(backup)));
}

/// A consistent copy of every record of the embedded store, as it was when
/// the request arrived, streamed while the service goes on writing (writes
/// pause for one flush, milliseconds). The body is the backup stream that
/// `anamnesis backup --to DIR` reads and checks (a header with the backup
/// point, the records, and an end frame with their count and SHA-256); a
/// stream cut short lacks the end frame. Needs `admin`; audited. One backup
/// at a time; refused on the database backend.
#[utoipa::path(
    get, path = "/v1/admin/backup", tag = "operations",
    responses(
        (status = 200, description = "The backup stream (see `anamnesis backup`)", content_type = "application/vnd.anamnesis.backup"),
        (status = 409, description = "A backup is already being taken (`backup_in_progress`), or the store is the database backend (`backup_not_supported`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn backup(
    auth: Authorized<BackupStore>,
    services: web::Data<Services>,
) -> Result<HttpResponse, ApiError> {
    let started = services.backup().await.map_err(ApiError::from);
    audit::record_store_action(&auth.principal, Action::Backup, &started);
    let stream = started?;
    // Each chunk reads the store: off the server's threads.
    let body = futures_util::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        let read = web::block(move || {
            let chunk = stream.next_chunk();
            (chunk, stream)
        })
        .await;
        let failed = |why: String| {
            // The status line is gone: cut the connection, so the client
            // sees a stream without its end frame, never a short backup
            // that looks whole.
            tracing::error!(error = %why, "a backup failed part-way");
            Some((
                Err(actix_web::error::ErrorInternalServerError("backup failed")),
                None,
            ))
        };
        match read {
            Ok((Ok(None), _)) => None,
            Ok((Ok(Some(chunk)), stream)) => Some((Ok(web::Bytes::from(chunk)), Some(stream))),
            Ok((Err(e), _)) => failed(e.to_string()),
            Err(e) => failed(e.to_string()),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type(STREAM_TYPE)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .streaming(body))
}
