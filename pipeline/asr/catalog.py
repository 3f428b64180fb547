"""Official GigaAM model names, aliases, download addresses and checksums (SPEC §1)."""

from __future__ import annotations

from dataclasses import dataclass

BASE_URL = "https://cdn.chatwm.opensmodel.sberdevices.ru/GigaAM"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # ctc | rnnt | ssl | emo
    md5: str
    tokenizer: bool  # ships `<name>_tokenizer.model`
    asr: bool  # this engine can transcribe with it

    @property
    def url(self) -> str:
        return f"{BASE_URL}/{self.name}.ckpt"

    @property
    def tokenizer_url(self) -> str:
        return f"{BASE_URL}/{self.name}_tokenizer.model"

    @property
    def filename(self) -> str:
        return f"{self.name}.ckpt"

    @property
    def tokenizer_filename(self) -> str:
        return f"{self.name}_tokenizer.model"


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("v3_ctc", "ctc", "73413e7be9c6a5935827bfab5c0dd678", False, True),
        ModelInfo("v3_rnnt", "rnnt", "0fd2c9a1ff66abd8d32a3a07f7592815", False, True),
        ModelInfo("v3_e2e_ctc", "ctc", "367074d6498f426d960b25f49531cf68", True, True),
        ModelInfo("v3_e2e_rnnt", "rnnt", "2730de7545ac43ad256485a462b0a27a", True, True),
        ModelInfo("v3_ssl", "ssl", "70cbf5ed7303a0ed242ddb257e9dc6a6", False, False),
        ModelInfo("v2_ctc", "ctc", "e00f59cb5d39624fb30d1786044795bf", False, True),
        ModelInfo("v2_rnnt", "rnnt", "547460139acfebd842323f59ed54ab54", False, True),
        ModelInfo("v2_ssl", "ssl", "cd4cf819c8191a07b9d7edcad111668e", False, False),
        ModelInfo("v1_ctc", "ctc", "f027f199e590a391d015aeede2e66174", False, False),
        ModelInfo("v1_rnnt", "rnnt", "02c758999bcdc6afcb2087ef256d47ef", True, False),
        ModelInfo("v1_ssl", "ssl", "dc7f7b231f7f91c4968dc21910e7b396", False, False),
        ModelInfo("emo", "emo", "7ce76f9535cb254488985057c0d33006", False, False),
    )
}

ALIASES = {"ctc": "v3_ctc", "rnnt": "v3_rnnt", "e2e_ctc": "v3_e2e_ctc", "e2e_rnnt": "v3_e2e_rnnt", "ssl": "v3_ssl"}

DEFAULT_MODEL = "v3_e2e_rnnt"


class UnknownModel(ValueError):
    pass


def resolve_name(name: str) -> ModelInfo:
    canonical = ALIASES.get(name, name)
    info = MODELS.get(canonical)
    if info is None:
        known = ", ".join(sorted([*ALIASES, *MODELS]))
        raise UnknownModel(f"unknown model {name!r}; known names: {known}")
    return info
