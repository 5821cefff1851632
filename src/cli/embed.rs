//! `vitnas embed --model <BERT dir | hub id> <sentence>...`: sentence
//! embeddings (mean-pooled, L2-normalised) and their cosine similarities.

use clap::Args;
use vitnas::models::{bert::Bert, sentence_embeddings, text::TextTokenizer};

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// A Hugging Face BERT directory (config.json, model.safetensors,
    /// tokenizer.json) or a hub id, e.g. sentence-transformers/all-MiniLM-L6-v2:
    /// taken from the Hugging Face cache, downloaded into it when missing
    /// (not with HF_HUB_OFFLINE=1).
    #[arg(long)]
    model: String,
    /// Sentences to embed.
    #[arg(required = true)]
    sentences: Vec<String>,
    /// Print the embeddings as JSON too.
    #[arg(long)]
    json: bool,
}

pub fn run(a: EmbedArgs) -> anyhow::Result<()> {
    let dir = vitnas::hub::resolve(&a.model)?;
    let model = Bert::load_dir(&dir)?;
    let tok = TextTokenizer::from_file(
        &dir.join("tokenizer.json"),
        model.config.max_position_embeddings,
    )?;
    let s: Vec<&str> = a.sentences.iter().map(String::as_str).collect();
    let emb = sentence_embeddings(&model, &tok, &s)?;
    let sim = emb.matmul(&emb.t()?)?.to_vec2::<f32>()?;
    println!("cosine similarity ({} dims):", emb.dim(1)?);
    for (i, row) in sim.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:.4}")).collect();
        println!("[{i}] {}  {:?}", cells.join(" "), s[i]);
    }
    if a.json {
        println!("{}", serde_json::to_string(&emb.to_vec2::<f32>()?)?);
    }
    Ok(())
}
