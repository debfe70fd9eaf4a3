"""The names of the files in a saved model folder (``RUN/model/``), in one place.

Training and ``save_pretrained`` write them; ``tuwen.tasks.saved_model.load`` is the one
reader. Below every layer, so that models, data and apps name the same files.
"""

CONFIG_FILE = "config.json"                    # ModelSpec: the architecture, sizes, ids
WEIGHTS_FILE = "model.safetensors"             # the weights
TOKENIZER_FILE = "tokenizer.json"              # the decoder's (language model's) tokenizer
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TEXT_TOKENIZER_DIR = "text_tokenizer"          # the text encoder's own tokenizer, if it has one
VOCAB_FILE = "answer_vocab.json"               # VQA's answer vocabulary (classifying models)
PROCESSOR_FILE = "preprocessor_config.json"    # an hf image tower's preprocessing, for HF tools
CARD_FILE = "README.md"                        # the model card
