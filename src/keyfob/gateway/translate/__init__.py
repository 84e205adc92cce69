"""Translation between the OpenAI and Anthropic wire formats, both ways, streams included.

Pure functions on parsed JSON and small stream state machines over SSE events: nothing
here knows about the web framework, the store or money. Module names say the direction
of what they *produce*: ``openai_to_anthropic`` turns OpenAI-format requests, answers
and stream chunks into Anthropic-format ones; ``anthropic_to_openai`` the other way;
``responses`` implements the Responses API over chat completions.

A request that cannot be expressed in the target format raises ``Untranslatable``
(a 400 for the client), never a silent change of meaning.
"""


class Untranslatable(ValueError):
    """The request uses a feature the serving provider's wire format cannot express."""
