def pages():
    return []


def actions():
    return []
