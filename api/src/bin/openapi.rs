//! Prints the api's OpenAPI document: `cargo run -p logpipeline-api --bin openapi > docs/openapi.json`.

fn main() {
    println!("{}", logpipeline_api::docs::openapi_json());
}
