"""The paper's baselines (Table 1): KenLM Kneser-Ney n-gram (kn5), feed-forward n-gram (ff), LSTM (lstm)."""
