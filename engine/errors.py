"""The one exception type that reaches users as a one-line message instead of a traceback."""


class LstmgenError(Exception):
    """A problem the user can fix: the message names what is wrong and how to fix it.

    The CLI prints it as a single line on stderr and exits with code 2; library users catch it.
    """


class TextTooShort(LstmgenError):
    """A text with fewer than 2 tokens: nothing in it is predicted, so it has no score."""


class PromptTooLong(LstmgenError):
    """A prompt longer than the caller allows (a server's --max-prompt-tokens): its field is the prompt."""

    param = "prompt"
