//! `echonet export --journal PATH --session ID --out DIR`: one session of the results journal as
//! CSV, JSON and a FHIR R4 Observation bundle; `--list` prints the sessions instead.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use echonet_edge::publish::export::{to_csv, to_fhir_bundle, to_json};
use echonet_edge::publish::journal::Journal;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The journal database (`echonet run --journal PATH`).
    #[arg(long)]
    pub journal: PathBuf,
    /// The session to export (see `--list`).
    #[arg(long, required_unless_present = "list")]
    pub session: Option<String>,
    /// Print the sessions as JSON lines and stop.
    #[arg(long)]
    pub list: bool,
    /// Folder for SESSION.csv, SESSION.json and SESSION.fhir.json (created if absent).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.journal.is_file() {
        anyhow::bail!("{}: no journal there", args.journal.display());
    }
    let journal = Journal::open_existing(&args.journal)?;
    if args.list {
        for s in journal.sessions()? {
            println!("{}", serde_json::to_string(&s)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let session = args.session.context("--session is required")?;
    let (info, rows) = journal.session_rows(&session)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // Session ids are made of digits, letters and dashes; anything else is replaced for the name.
    let stem: String = session
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let write = |ext: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = args.out.join(format!("{stem}.{ext}"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let csv = write("csv", to_csv(&rows)?)?;
    let json = write(
        "json",
        serde_json::to_string_pretty(&to_json(&info, &rows))?,
    )?;
    let fhir = write(
        "fhir.json",
        serde_json::to_string_pretty(&to_fhir_bundle(&info, &rows))?,
    )?;
    eprintln!(
        "{} records of session {session}: {}, {}, {}",
        rows.len(),
        csv.display(),
        json.display(),
        fhir.display()
    );
    Ok(ExitCode::SUCCESS)
}
