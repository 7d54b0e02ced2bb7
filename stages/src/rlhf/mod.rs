//! Pieces shared by the RLHF stages (Llama 2 §3.2): the reward arithmetic (margins, the
//! safety-gated combined reward, logit and whitening, GAE) in `reward`; loading a policy or
//! reward model directory, generating answers and scoring (prompt, answer) pairs in `policy`;
//! reading and writing the preference-pair table in `pairs`; both reward models behind the safety
//! gate in `scorer`. The stage files (`collect_preferences`, `train_reward`,
//! `rejection_sample`, `ppo`) only wire these to the graph's stage contract.

pub mod pairs;
pub mod policy;
pub mod reward;
pub mod scorer;
