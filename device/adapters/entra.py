"""Microsoft Entra ID tokens for Azure OpenAI, through the optional azure-identity package.

A token is fetched before a session connects and reused until five minutes before it
expires. azure-identity's credentials block (they make HTTP calls), so they run in a thread.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_MARGIN_S = 300.0


class TokenCredential(Protocol):
    """What azure-identity's credentials offer (azure.core.credentials.TokenCredential)."""

    def get_token(self, *scopes: str) -> Any: ...


class EntraTokens:
    def __init__(self, credential: TokenCredential | None = None) -> None:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self._credential = credential
        self._token = ""
        self._expires_on = 0.0

    async def bearer(self) -> str:
        if time.time() > self._expires_on - REFRESH_MARGIN_S:
            access = await asyncio.to_thread(self._credential.get_token, SCOPE)
            self._token, self._expires_on = access.token, float(access.expires_on)
        return self._token
