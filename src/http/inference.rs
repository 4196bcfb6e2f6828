//! `POST /api/jobs/{id}/predict` and `POST /api/jobs/{id}/cam`: an uploaded image (the raw body,
//! e.g. `curl --data-binary @film.jpeg`) → class probabilities, or the Grad-CAM overlay as PNG.
//!
//! The server only checks the upload — a JPEG or PNG whose header declares a sane size and whose
//! data decodes completely — so a bad file costs a 4xx in milliseconds and never reaches a model.
//! The prediction itself runs in the job's warm model process (the supervisor's, never here).

use super::auth::Authed;
use super::extract::Path;
use super::job_view::find_own_files;
use super::{ApiError, AppState};
use crate::catalog;
use crate::domain::{Job, JobState};
use crate::supervisor::JobPaths;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Largest image accepted: decoded, it would be several hundred megabytes.
pub const MAX_PIXELS: u64 = 50_000_000;

/// `POST /api/jobs/{id}/predict`: `{"job_id", "classes", "probabilities": {class: p}, "predicted", "width", "height"}`.
#[utoipa::path(
    post, path = "/api/jobs/{id}/predict", tag = "results", params(("id" = String, Path, description = "the job's id (a UUID)")),
    request_body(content = String, description = "a JPEG or PNG image", content_type = "image/*"),
    responses((status = 200, description = "class probabilities", body = Object),
        (status = 409, description = "the job has no model yet", body = super::error::ErrorBody),
        (status = 413, description = "over 50 MP or 25 MB", body = super::error::ErrorBody),
        (status = 415, description = "not an image", body = super::error::ErrorBody),
        (status = 422, description = "a truncated or corrupt image", body = super::error::ErrorBody),
        (status = 503, description = "the model could not answer; try again", body = super::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn predict(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let job = find_own_files(&state, &user, &id).await?;
    let (answer, _) = run(&state, &job, body, false).await?;
    let classes = classes(&state, &job).await;
    let probabilities: Vec<f64> =
        serde_json::from_value(answer["probabilities"].clone()).map_err(|err| ApiError::Internal(err.into()))?;
    // A sigmoid model gives the positive (second) class's probability.
    let per_class: Vec<f64> =
        if probabilities.len() == 1 { vec![1.0 - probabilities[0], probabilities[0]] } else { probabilities };
    let predicted = answer["predicted"].as_u64().unwrap_or(0) as usize;
    let named: serde_json::Map<String, serde_json::Value> =
        classes.iter().zip(&per_class).map(|(class, p)| (class.clone(), json!(p))).collect();
    Ok(Json(json!({
        "job_id": job.id, "classes": classes, "probabilities": named,
        "predicted": classes.get(predicted), "width": answer["width"], "height": answer["height"],
    }))
    .into_response())
}

/// `POST /api/jobs/{id}/cam`: the Grad-CAM heatmap of the predicted class over the image, PNG.
#[utoipa::path(
    post, path = "/api/jobs/{id}/cam", tag = "results", params(("id" = String, Path, description = "the job's id (a UUID)")),
    request_body(content = String, description = "a JPEG or PNG image", content_type = "image/*"),
    responses((status = 200, description = "the Grad-CAM heatmap over the image", content_type = "image/png", body = String),
        (status = 409, description = "the job has no model yet", body = super::error::ErrorBody),
        (status = 413, description = "over 50 MP or 25 MB", body = super::error::ErrorBody),
        (status = 415, description = "not an image", body = super::error::ErrorBody),
        (status = 422, description = "a truncated or corrupt image", body = super::error::ErrorBody),
        (status = 503, description = "the model could not answer; try again", body = super::error::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn cam(
    State(state): State<AppState>,
    Authed(user): Authed,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let job = find_own_files(&state, &user, &id).await?;
    let (_, png) = run(&state, &job, body, true).await?;
    let png = png.expect("a cam request writes a picture");
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], png).into_response())
}

/// The job's class names, from the catalog (off the async runtime: it looks at folders).
async fn classes(state: &AppState, job: &Job) -> Vec<String> {
    let (root, dataset) = (state.paths.datasets.clone(), job.spec.dataset.clone());
    let classes =
        tokio::task::spawn_blocking(move || catalog::datasets::open(&root, &dataset).map(|dataset| dataset.classes));
    classes.await.ok().and_then(Result::ok).unwrap_or_default()
}

/// Checks the upload, hands it to the job's warm model and returns the answer (and the PNG for a
/// heatmap). Uploads are written to the job's `uploads/` folder and removed afterwards.
async fn run(
    state: &AppState,
    job: &Job,
    body: Bytes,
    cam: bool,
) -> Result<(serde_json::Value, Option<Vec<u8>>), ApiError> {
    let paths = JobPaths::new(&state.paths.data_dir, job.id);
    if job.state != JobState::Succeeded || !paths.artifacts().join("final.safetensors").is_file() {
        return Err(ApiError::Conflict {
            message: format!("job {} has no trained model yet (state {})", job.id, job.state),
            detail: json!({"state": job.state}),
        });
    }
    let body_for_check = body.clone();
    let extension = tokio::task::spawn_blocking(move || check_upload(&body_for_check))
        .await
        .map_err(|err| ApiError::Internal(err.into()))??;
    // The upload is written for the worker to read: not onto a full disk.
    state.disk.writable()?;
    let uploads = paths.dir.join("uploads");
    tokio::fs::create_dir_all(&uploads).await.map_err(|err| ApiError::Internal(err.into()))?;
    let name = uuid::Uuid::new_v4();
    let image = uploads.join(format!("{name}.{extension}"));
    let picture = uploads.join(format!("{name}-cam.png"));
    if let Err(err) = tokio::fs::write(&image, &body).await {
        let _ = tokio::fs::remove_file(&image).await;
        if crate::files::is_storage_error(&err) {
            return Err(ApiError::InsufficientStorage(crate::disk_space::Full::at(&uploads)));
        }
        return Err(ApiError::Internal(err.into()));
    }
    let request = json!({"image": image, "cam": if cam { Some(&picture) } else { None }});
    let answer = state.supervisor.infer(job.id, &request).await;
    let png = if cam { tokio::fs::read(&picture).await.ok() } else { None };
    let _ = tokio::fs::remove_file(&image).await;
    let _ = tokio::fs::remove_file(&picture).await;
    let answer = answer.map_err(|err| ApiError::Unavailable(format!("{err}; try again")))?;
    if answer["ok"] != json!(true) {
        // The upload passed our checks but the worker's decoder refused it.
        let reason = answer["error"].as_str().unwrap_or("unreadable image").to_string();
        return Err(ApiError::BadUpload { status: StatusCode::UNPROCESSABLE_ENTITY, message: reason });
    }
    if cam && png.is_none() {
        return Err(ApiError::Unavailable(String::from("the model process wrote no heatmap; try again")));
    }
    Ok((answer, png))
}

/// Accepts a complete JPEG or PNG of at most [`MAX_PIXELS`] and returns its file extension.
pub fn check_upload(bytes: &[u8]) -> Result<&'static str, ApiError> {
    let refuse = |status: StatusCode, message: String| ApiError::BadUpload { status, message };
    if bytes.is_empty() {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            String::from("empty body: send the image file itself, e.g. curl --data-binary @film.jpeg"),
        ));
    }
    let (format, extension) = match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => (image::ImageFormat::Jpeg, "jpeg"),
        Ok(image::ImageFormat::Png) => (image::ImageFormat::Png, "png"),
        Ok(other) => {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("{other:?} images are not accepted; send a JPEG or PNG"),
            ))
        }
        Err(_) => {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                String::from("not an image; send a JPEG or PNG file"),
            ))
        }
    };
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|err| refuse(StatusCode::UNPROCESSABLE_ENTITY, format!("unreadable {extension} header: {err}")))?;
    let pixels = width as u64 * height as u64;
    if pixels > MAX_PIXELS {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the image declares {width}×{height} px ({:.0} MP); at most {} MP is accepted",
                pixels as f64 / 1e6,
                MAX_PIXELS / 1_000_000
            ),
        ));
    }
    // A JPEG cut short still decodes (the rest comes out gray), so it must end with its EOI marker.
    if format == image::ImageFormat::Jpeg && !ends_with_eoi(bytes) {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            String::from("truncated JPEG: the file ends before its end-of-image marker"),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(4 * MAX_PIXELS);
    let mut decoder = reader();
    decoder.limits(limits);
    decoder.decode().map_err(|err| refuse(StatusCode::UNPROCESSABLE_ENTITY, format!("corrupt {extension}: {err}")))?;
    Ok(extension)
}

/// Whether a JPEG ends with `FF D9`, allowing the padding some encoders append.
fn ends_with_eoi(bytes: &[u8]) -> bool {
    let end = bytes
        .iter()
        .rposition(|&byte| byte != 0 && byte != b'\n' && byte != b'\r' && byte != b' ')
        .map_or(0, |i| i + 1);
    end >= 2 && bytes[end - 2..end] == [0xFF, 0xD9]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let image = image::GrayImage::from_fn(width, height, |x, y| image::Luma([(x * 7 + y * 3) as u8]));
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&image).unwrap();
        bytes
    }

    fn status(bytes: &[u8]) -> Option<StatusCode> {
        match check_upload(bytes) {
            Ok(_) => None,
            Err(ApiError::BadUpload { status, .. }) => Some(status),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn good_images_pass_and_bad_ones_get_the_right_status() {
        let good = jpeg(64, 48);
        assert_eq!(check_upload(&good).unwrap(), "jpeg");
        let mut png = Vec::new();
        image::DynamicImage::ImageLuma8(image::GrayImage::new(10, 10))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(check_upload(&png).unwrap(), "png");
        assert_eq!(status(b"hello, this is text"), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(status(b""), Some(StatusCode::UNPROCESSABLE_ENTITY));
        assert_eq!(status(&good[..good.len() / 2]), Some(StatusCode::UNPROCESSABLE_ENTITY), "truncated");
        assert_eq!(status(&png[..png.len() - 20]), Some(StatusCode::UNPROCESSABLE_ENTITY), "truncated PNG");
    }

    #[test]
    fn a_tiny_file_declaring_a_huge_image_is_refused_from_its_header() {
        // A valid JPEG header whose frame says 60000×60000 px: a decompression bomb.
        let mut bomb = jpeg(8, 8);
        let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        // 413 comes from the header check: decoding would fail as corrupt (422) instead.
        assert_eq!(status(&bomb), Some(StatusCode::PAYLOAD_TOO_LARGE));
    }
}
