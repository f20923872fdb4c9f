//! A journal session exported for other systems: CSV (one row per record), JSON (the session and
//! every record as published), and a FHIR R4 `Bundle` of `Observation`s for the hospital's
//! systems: one per "ok" record and quantity, coded in LOINC.
//!
//! Codes (LOINC, as DICOM PS3.16 CID 12202 "Left Ventricle Volume Measurement" lists them, plus
//! the generic LVEF term): LV ejection fraction 10230-1 "Left ventricular Ejection fraction" with
//! 18043-0 "Left ventricular Ejection fraction by US"; LV end-diastolic volume 18026-5; LV
//! end-systolic volume 18148-7. Units in UCUM (`%`, `mL`). Observations are `preliminary`: they
//! come from a model whose intended use is carried in every note, never signed off by a person.

use serde_json::{json, Value};

use super::journal::{JournalRow, SessionInfo};

pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";

/// (field, LOINC codes with display names, UCUM unit)
type Quantity = (
    fn(&JournalRow) -> Option<f64>,
    &'static [(&'static str, &'static str)],
    &'static str,
);

const QUANTITIES: [Quantity; 3] = [
    (
        |r| r.ef_percent,
        &[
            ("10230-1", "Left ventricular Ejection fraction"),
            ("18043-0", "Left ventricular Ejection fraction by US"),
        ],
        "%",
    ),
    (
        |r| r.edv_ml,
        &[("18026-5", "Left ventricular End diastolic volume")],
        "mL",
    ),
    (
        |r| r.esv_ml,
        &[("18148-7", "Left ventricular End systolic volume")],
        "mL",
    ),
];

/// The record's EF agreement (issue #13): |paper's mean EF - volume-curve EF| in points and
/// whether it is beyond the configured margin; `None` when the record has none.
fn agreement(r: &JournalRow) -> Option<(f64, f64, bool)> {
    let a = r.record.get("agreement")?;
    Some((
        a.get("difference")?.as_f64()?,
        a.get("margin")?.as_f64()?,
        a.get("low")?.as_bool()?,
    ))
}

/// CSV with a header; empty cells for absent values.
pub fn to_csv(rows: &[JournalRow]) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "row",
        "session_id",
        "exam_id",
        "status",
        "withheld_reason",
        "seq",
        "capture_time",
        "publish_time",
        "ef_percent",
        "edv_ml",
        "esv_ml",
        "valid_frames",
        "window_frames",
        "model_id",
        "model_hash",
        "ef_agreement_difference",
        "ef_agreement_low",
    ])?;
    let opt = |v: Option<String>| v.unwrap_or_default();
    for r in rows {
        w.write_record([
            r.row.to_string(),
            r.session_id.clone(),
            opt(r.exam_id.clone()),
            r.status.clone(),
            opt(r.withheld_reason.clone()),
            opt(r.seq.map(|v| v.to_string())),
            opt(r.capture_time.clone()),
            opt(r.publish_time.clone()),
            opt(r.ef_percent.map(|v| v.to_string())),
            opt(r.edv_ml.map(|v| v.to_string())),
            opt(r.esv_ml.map(|v| v.to_string())),
            opt(r.valid_frames.map(|v| v.to_string())),
            opt(r.window_frames.map(|v| v.to_string())),
            r.model_id.clone(),
            r.model_hash.clone(),
            opt(agreement(r).map(|(d, _, _)| d.to_string())),
            opt(agreement(r).map(|(_, _, low)| low.to_string())),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The session and its records as published.
pub fn to_json(session: &SessionInfo, rows: &[JournalRow]) -> Value {
    json!({
        "schema": "echonet.journal-export/1",
        "session": session,
        "records": rows.iter().map(|r| {
            let mut v = r.record.clone();
            if let Some(o) = v.as_object_mut() {
                o.insert("journal_row".into(), json!(r.row));
                o.insert("exam_id".into(), json!(r.exam_id));
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// A FHIR R4 `collection` Bundle: one Observation per "ok" record and quantity present.
pub fn to_fhir_bundle(session: &SessionInfo, rows: &[JournalRow]) -> Value {
    let mut entries = Vec::new();
    for r in rows.iter().filter(|r| r.status == "ok") {
        for (value_of, codes, unit) in QUANTITIES.iter() {
            let Some(value) = value_of(r) else { continue };
            let id = format!("{}-{}-{}", session.session_id, r.row, codes[0].0);
            let mut obs = json!({
                "resourceType": "Observation",
                "id": id,
                "identifier": [{
                    "system": "urn:echonet-edge:journal",
                    "value": format!("{}/{}/{}", session.session_id, r.row, codes[0].0),
                }],
                "status": "preliminary",
                "category": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "imaging",
                    "display": "Imaging",
                }]}],
                "code": {
                    "coding": codes.iter().map(|(code, display)| json!({
                        "system": LOINC, "code": code, "display": display,
                    })).collect::<Vec<_>>(),
                    "text": codes[0].1,
                },
                "valueQuantity": {
                    "value": (value * 100.0).round() / 100.0,
                    "unit": unit,
                    "system": UCUM,
                    "code": unit,
                },
                "method": {"text": format!(
                    "echonet-edge {} model {} ({}), {} of {} frames usable",
                    session.version,
                    r.model_id,
                    r.model_hash,
                    r.valid_frames.unwrap_or(0),
                    r.window_frames.unwrap_or(0)
                )},
                "device": {"display": format!("echonet-edge model {}", r.model_id)},
                "note": [{"text": format!("Intended use: {}", session.intended_use)}],
            });
            // A flagged EF says so where a clinician reads it, as the display does.
            if let (Some((difference, margin, true)), "%") = (agreement(r), *unit) {
                if let Some(notes) = obs["note"].as_array_mut() {
                    notes.push(json!({"text": format!(
                        "Low agreement: the mean of per-frame EF and the volume-curve EF differ \
                         by {difference:.1} points (margin {margin:.1})"
                    )}));
                }
            }
            if let Some(t) = &r.capture_time {
                obs["effectiveDateTime"] = json!(t);
            }
            if let Some(t) = &r.publish_time {
                obs["issued"] = json!(t);
            }
            if let Some(exam) = &r.exam_id {
                if let Some(identifiers) = obs["identifier"].as_array_mut() {
                    identifiers.push(json!({"system": "urn:echonet-edge:exam", "value": exam}));
                }
            }
            entries.push(json!({
                "fullUrl": format!("urn:uuid:{}", pseudo_uuid(&id)),
                "resource": obs,
            }));
        }
    }
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": crate::timefmt::rfc3339_millis(std::time::SystemTime::now()),
        "entry": entries,
    })
}

/// A stable UUID-shaped name for a resource (FHIR `fullUrl` must be absolute): the SHA-256 of its
/// id, laid out as a version-8 (custom) UUID.
fn pseudo_uuid(id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0F) | 0x80;
    b[8] = (b[8] & 0x3F) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, ef: Option<f64>) -> JournalRow {
        JournalRow {
            row: 1,
            session_id: "s1".into(),
            exam_id: Some("exam-7".into()),
            status: status.into(),
            withheld_reason: None,
            seq: Some(40),
            capture_time: Some("2026-11-27T10:00:00.123Z".into()),
            publish_time: Some("2026-11-27T10:00:00.170Z".into()),
            ef_percent: ef,
            edv_ml: Some(107.0),
            esv_ml: Some(48.0),
            valid_frames: Some(18),
            window_frames: Some(20),
            model_id: "m".into(),
            model_hash: "sha256:00".into(),
            record: json!({"status": status}),
        }
    }

    fn session() -> SessionInfo {
        SessionInfo {
            session_id: "s1".into(),
            exam_id: Some("exam-7".into()),
            started_at: "2026-11-27T10:00:00.000Z".into(),
            model_id: "m".into(),
            model_hash: "sha256:00".into(),
            intended_use: "demo".into(),
            source_kind: "phantom".into(),
            source_name: "seed 1".into(),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn fhir_has_one_observation_per_ok_quantity_with_loinc_codes() {
        let rows = vec![row("ok", Some(55.1)), row("withheld", None)];
        let b = to_fhir_bundle(&session(), &rows);
        assert_eq!(b["resourceType"], "Bundle");
        let entries = b["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        let codes: Vec<&str> = entries
            .iter()
            .map(|e| e["resource"]["code"]["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["10230-1", "18026-5", "18148-7"]);
        let ef = &entries[0]["resource"];
        assert_eq!(ef["valueQuantity"]["value"], 55.1);
        assert_eq!(ef["valueQuantity"]["code"], "%");
        assert_eq!(ef["status"], "preliminary");
        assert_eq!(ef["effectiveDateTime"], "2026-11-27T10:00:00.123Z");
        assert!(entries[0]["fullUrl"]
            .as_str()
            .unwrap()
            .starts_with("urn:uuid:"));
    }

    /// A record flagged for low EF agreement carries the flag into the CSV and as a note on
    /// its FHIR EF observation (not on the volumes); an unflagged one has no such note.
    #[test]
    fn low_ef_agreement_reaches_the_csv_and_the_fhir_ef_note() {
        let mut flagged = row("ok", Some(55.1));
        flagged.record = json!({"status": "ok",
            "agreement": {"difference": 12.5, "margin": 10.0, "low": true}});
        let text = to_csv(std::slice::from_ref(&flagged)).unwrap();
        let mut lines = text.lines();
        assert!(lines
            .next()
            .unwrap()
            .ends_with("ef_agreement_difference,ef_agreement_low"));
        assert!(lines.next().unwrap().ends_with(",12.5,true"), "{text}");
        let b = to_fhir_bundle(&session(), std::slice::from_ref(&flagged));
        let notes = |i: usize| b["entry"][i]["resource"]["note"].as_array().unwrap().len();
        assert_eq!(notes(0), 2, "EF carries the flag");
        assert!(b["entry"][0]["resource"]["note"][1]["text"]
            .as_str()
            .unwrap()
            .contains("12.5 points (margin 10.0)"));
        assert_eq!((notes(1), notes(2)), (1, 1), "the volumes do not");
        let plain = to_fhir_bundle(&session(), &[row("ok", Some(55.1))]);
        assert_eq!(
            plain["entry"][0]["resource"]["note"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn csv_has_a_header_and_empty_cells_for_absent_values() {
        let text = to_csv(&[row("withheld", None)]).unwrap();
        let mut lines = text.lines();
        assert!(lines
            .next()
            .unwrap()
            .starts_with("row,session_id,exam_id,status"));
        let cells: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(cells[3], "withheld");
        assert_eq!(cells[8], "");
    }
}
