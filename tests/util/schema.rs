//! The CLI's JSON output checked against its published schemas (`docs/schemas/`), by an
//! independent validator: python-jsonschema (Draft 2020-12), which `scripts/install-test-deps`
//! installs with moto.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::cache_bin;

const CHECK: &str = r#"
import glob, json, os, sys
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
folder, name = sys.argv[1], sys.argv[2]
resources = []
for path in glob.glob(os.path.join(folder, "*.schema.json")):
    with open(path) as f:
        schema = json.load(f)
    Draft202012Validator.check_schema(schema)
    resources.append((schema["$id"], Resource.from_contents(schema)))
with open(os.path.join(folder, name + ".schema.json")) as f:
    main = json.load(f)
validator = Draft202012Validator(main, registry=Registry().with_resources(resources))
errors = sorted(validator.iter_errors(json.load(sys.stdin)), key=lambda e: list(e.path))
for e in errors[:10]:
    print("/".join(map(str, e.path)) or "(top)", ":", e.message)
sys.exit(1 if errors else 0)
"#;

/// Validates `json` against `docs/schemas/<schema>.schema.json`; `Err` lists what does not fit.
pub fn check(schema: &str, json: &str) -> Result<(), String> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schemas");
    let mut child = Command::new(cache_bin("moto/bin/python"))
        .args(["-c", CHECK, folder.to_str().unwrap(), schema])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => panic!(
            "the schema check did not run: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Asserts that `json` fits `docs/schemas/<schema>.schema.json`.
pub fn assert_valid(schema: &str, json: &str) {
    if let Err(e) = check(schema, json) {
        panic!("output does not fit docs/schemas/{schema}.schema.json:\n{e}\n{json}");
    }
}
