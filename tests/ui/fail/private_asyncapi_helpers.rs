// The helpers of generated `asyncapi()` methods are not public API: only
// `mqrpc::__private` reaches them.
fn main() {
    let _ = mqrpc::asyncapi::document;
    let _ = mqrpc::asyncapi::codegen::unit;
}
