pub struct Job;

#[mqrpc::service]
pub trait Calculator {
    async fn run(&self, job: Job) -> u32;
}

fn main() {}
