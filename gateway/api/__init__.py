"""OpenAI request bodies validated (a 400 naming the field), and what a response says about itself (usage,
finish reasons). Pure: no I/O."""
