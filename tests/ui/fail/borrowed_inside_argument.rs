#[mqrpc::service]
pub trait Calculator {
    async fn greet(&self, names: Vec<&'static str>, other: Option<Box<dyn std::any::Any>>) -> String;
}

fn main() {}
